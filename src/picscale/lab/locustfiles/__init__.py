"""Locust journeys of the lab's drills, built on ``picscale.load.locustfile``'s (each
module is a locustfile: Locust runs it in its own process, the lab never imports it)."""
