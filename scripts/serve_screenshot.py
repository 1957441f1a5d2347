"""The README's picture of the upload page: ``fcnseg serve`` on a checkpoint, one image dropped in, headless
Chromium's screenshot.

    python -m scripts.serve_screenshot --checkpoint runs/demo/best.pt \
        --image fcnseg/data/sample/camvid/val/0016E5_07959.jpg --out docs/serve.png

Needs the serve extra, selenium, and Debian's chromium + chromium-driver (``.ci/run`` installs them).
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
import urllib.request
from pathlib import Path

import uvicorn

from fcnseg.serve.app import create_app
from fcnseg.serve.service import load_service
from scripts._browser import chromium, missing, show


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--image", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/serve.png"))
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--opacity", type=int, default=60)
    args = ap.parse_args(argv)
    why = missing()
    if why:
        print(f"serve_screenshot: {why}", file=sys.stderr)
        return 1
    server = uvicorn.Server(uvicorn.Config(create_app(load_service(args.checkpoint)), host="127.0.0.1",
                                           port=args.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{args.port}/"
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "health", timeout=5).read()
            break
        except OSError:
            time.sleep(0.1)
    # warm: the first image of a size pays the engine's set-up for that size, not shown as model time
    urllib.request.urlopen(urllib.request.Request(url + "predict", data=args.image.read_bytes(), method="POST"),
                           timeout=600).read()
    driver = chromium(1280, 760)
    try:
        show(driver, url, args.image, args.opacity, timeout=600)
        time.sleep(0.5)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(30)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
