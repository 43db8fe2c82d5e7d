"""Runs INSIDE the serving image: real TorchServe on the container's loopback, one prediction.

``python smoke_serving.py STORE`` where STORE holds ``elastic.mar``. Prints one JSON line
(``{"status": 200, "level": ..., "java": ..., "python": ...}``) and exits 0 when TorchServe
answered a PNG with a level; the test on the host reads that line. Only the image's own
interpreter and packages are used (no test helpers: they are not in the image).
"""

from __future__ import annotations

import io
import json
import platform
import subprocess
import sys
import urllib.request
from pathlib import Path

from PIL import Image

from elastiserve_serve.ts_server import run_torchserve


def main() -> int:
    store = Path(sys.argv[1])
    run_dir = Path("/tmp/elastiserve-smoke")
    image = io.BytesIO()
    Image.new("L", (16, 16), color=128).save(image, format="PNG")
    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=True)
    with run_torchserve(run_dir, store, ["elastic=elastic.mar"], ready_timeout_s=240) as server:
        request = urllib.request.Request(
            f"{server.inference_url}/predictions/elastic",
            data=image.getvalue(),
            headers={
                "Authorization": f"Bearer {server.keys.inference}",
                "Content-Type": "image/png",  # urllib's form default reads as an empty body
            },
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            status = response.status
            body = json.loads(response.read())
    print(json.dumps({
        "status": status,
        "level": body.get("level"),
        "java": java.stderr.splitlines()[0],
        "python": platform.python_version(),
    }))
    return 0 if status == 200 and body.get("level") else 1


if __name__ == "__main__":
    sys.exit(main())
