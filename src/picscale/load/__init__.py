"""``picscale load``: Locust's user journeys against a Picscale service (a library the
lab's drills call, and a command), with a log of every write the simulated users attempted.

Importing this package imports neither Locust nor the app: Locust runs the journeys
(``locustfile.py``) in a process of its own.
"""
