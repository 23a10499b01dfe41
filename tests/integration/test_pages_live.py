"""A new photo's page follows the job that makes it through the job's event stream."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.api import new_user, upload
from tests.support.images import image_bytes
from tests.support.picscale_server import running_server


def test_a_processing_photo_page_listens_to_its_job(tmp_path: Path) -> None:
    # no worker: the photo stays processing while we look at its page
    with running_server(tmp_path, job_workers=0) as server:
        client, _ = new_user(server)
        photo = upload(client, image_bytes(320, 240))
        assert photo["status"] == "processing"
        page = client.get(f"/p/{photo['id']}").text
        found = re.search(r'data-events="/api/v1/jobs/(\d+)/events"', page)
        assert found is not None, page
        assert "every 1s" not in page  # no polling for the owner
        job = client.get(f"/api/v1/jobs/{found.group(1)}").json()
        assert job["photo_id"] == photo["id"] and job["status"] == "queued"
        # the fragment the page asks for once the stream says done
        fragment = client.get(f"/p/{photo['id']}/status").text
        assert f"/api/v1/jobs/{found.group(1)}/events" in fragment
        # someone else sees the photo processing, and asks again now and then
        other, _ = new_user(server, "other")
        theirs = other.get(f"/p/{photo['id']}").text
        assert "data-events" not in theirs and "every 1s" in theirs
