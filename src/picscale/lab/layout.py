"""Where a lab keeps its state, the ports it was given, and what the app is configured with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from picscale.lab.stages import Stage


@dataclass
class Layout:
    """A lab's directory, its ports (kept across restarts) and the stage it runs."""

    root: Path
    ports: dict[str, int]
    secret_key: str
    stage: Stage
    webs: int = 0  # web servers running now (0: the stage's own number)
    workers: int = 0  # worker components running now (0: the stage's own number)

    @property
    def web_count(self) -> int:
        return self.webs or self.stage.web_servers

    @property
    def worker_count(self) -> int:
        return self.workers or self.stage.workers

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def app_env(self) -> dict[str, str]:
        """What every web server and worker of the stage is configured with: the lab's
        own settings, and from each engine what the app needs to use it."""
        env = {
            "PICSCALE_DATA_DIR": str(self.data),  # one machine: the media directory is shared
            "PICSCALE_SECRET_KEY": self.secret_key,
            "PICSCALE_LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
        }
        for engine in self.stage.engines:
            env |= engine.app_env(self)
        return env
