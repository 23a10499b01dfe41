"""The celebrity drill's journeys: fans of one account (the run's only seeded celebrity).

A fan is a member of ``picscale load`` (sign up, log in, feed, uploads, edits) whose reads
go mostly to the celebrity: the profile, the gallery, the photos. Now and then someone new
signs up and follows the celebrity (a fresh account each time), so its follower count
grows from many accounts on every shard while its reads grow with the users Locust adds.
Requests about the celebrity are named apart, so that the statistics count them.
"""

from __future__ import annotations

import uuid
from typing import Any

from locust import task

from picscale.load import locustfile as journeys
from picscale.load.runner import PHOTOS_PER_CELEBRITY

CELEBRITY_SHARE = 0.85  # of the reads of profiles and photos
PROFILE = "GET /api/v1/users/{celebrity}"
GALLERY = "GET /api/v1/users/{celebrity}/photos"
PHOTO = "GET /api/v1/photos/{celebrity's}"


def celebrity() -> str:
    return journeys.world().celebrities[0]


def _label(path: str, name: str) -> str:
    """The request's name in the statistics: apart when it is about the celebrity."""
    if path == f"/api/v1/users/{celebrity()}":
        return PROFILE
    if path == f"/api/v1/users/{celebrity()}/photos":
        return GALLERY
    own = journeys.world().photos[:PHOTOS_PER_CELEBRITY]
    if path.startswith("/api/v1/photos/") and path.rsplit("/", 1)[1] in own:
        return PHOTO
    return name


class Fan(journeys.Member):
    """A member who mostly looks at one account (the only User class of this file:
    Locust runs the classes it finds in the locustfile's namespace)."""

    def popular_user(self) -> str:
        if self.rng.random() < CELEBRITY_SHARE:
            return celebrity()
        return super().popular_user()

    def popular_photo(self) -> str | None:
        own = journeys.world().photos[:PHOTOS_PER_CELEBRITY]
        if own and self.rng.random() < CELEBRITY_SHARE:
            return self.rng.choice(own)
        return super().popular_photo()

    def call(
        self, method: str, path: str, name: str, expect: int, **kwargs: Any
    ) -> journeys.Outcome:
        return super().call(method, path, _label(path, name), expect, **kwargs)

    @task(8)
    def new_fan(self) -> None:
        """Someone new signs up and follows the celebrity (this user goes on as them)."""
        self.username = f"m{journeys.world().run}_{uuid.uuid4().hex[:12]}"
        self.signed_up = False
        self.token = None
        self.own = []
        self.follow_user(celebrity())
