"""Run docker_image_puller.py as users do: a separate process, with its own exit status."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

SCRIPT = Path(__file__).resolve().parent.parent / "docker_image_puller.py"

# A guard for every test: a request to any host but loopback goes to a proxy on a closed
# loopback port and fails there, so no test can reach Docker Hub or another outside host.
OFFLINE_PROXIES = {
    "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost,::1", "no_proxy": "127.0.0.1,localhost,::1",
}


def puller_environment(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Return the test process's environment in English, with the offline proxy guard."""
    environment = {
        key: value for key, value in os.environ.items()
        if key.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "docker_default_platform")
        and not key.startswith(("LC_", "DOCKER_IMAGE_PULLER_"))
    }
    environment["LANG"] = "C.UTF-8"
    environment.pop("LANGUAGE", None)
    environment.update(OFFLINE_PROXIES)
    environment.update(extra or {})
    return environment


def run_puller(arguments: Sequence[str], *, stdin: Optional[str] = None, env: Optional[Dict[str, str]] = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments],
        input=stdin if stdin is not None else "",
        capture_output=True, text=True, timeout=timeout, env=puller_environment(env),
    )


def start_puller(arguments: Sequence[str], env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *arguments],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=puller_environment(env),
    )
