"""``mnist-dvc serve``: the class of an image (the digit, for MNIST), over HTTP on 127.0.0.1
(not a pipeline stage).

POST a PNG or JPEG (the request body) to ``/predict``; the answer is JSON
``{"class": "7", "probability": 0.9684}``, as ``mnist-dvc predict --json`` gives it. An image
it cannot use is a 400 with one line, ``{"error": "not a PNG or JPEG image"}``; another path
is a 404, another method a 405. The model is the one predict would use (the ONNX model while
it is current: no torch), loaded once, and images are fitted into its image size. Requests
are answered one at a time; it listens on the loopback interface only.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from mnist_dvc.commands.predict import RUNTIMES, Predictor, choose_model, load_predictor
from mnist_dvc.data.digit_image import ImageError, load_image

HOST = "127.0.0.1"
MAX_BYTES = 20 * 2**20  # a phone's photo is a few MB


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mnist-dvc serve", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument("--model", type=Path, help="as for mnist-dvc predict")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto",
                        help="as for mnist-dvc predict")
    args = parser.parse_args(argv)
    model = choose_model(args.runtime, args.model)
    server = make_server(load_predictor(model), args.port)
    print(f"serve: {model} at http://{HOST}:{server.server_port}/predict (POST a PNG or JPEG); "
          "Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def make_server(predict: Predictor, port: int) -> HTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/predict":
                return self.reply(404, f"no {self.path}: POST images to /predict")
            length = self.headers.get("Content-Length", "")
            if not length.isdigit() or not 0 < int(length) <= MAX_BYTES:
                return self.reply(400, f"send the image as the body, 1 byte to {MAX_BYTES:,}")
            with tempfile.NamedTemporaryFile(prefix="mnist-dvc-serve-") as image:
                image.write(self.rfile.read(int(length)))
                image.flush()
                try:
                    pixels = load_image(image.name, predict.image_shape)
                except ImageError as err:
                    return self.reply(400, str(err).removeprefix(f"{image.name}: "))
            probs = predict(pixels[None])[0]
            self.reply(200, answer={"class": predict.class_names[int(probs.argmax())],
                                    "probability": round(float(probs.max()), 4)})

        def do_GET(self) -> None:
            self.reply(405, "POST a PNG or JPEG image to /predict")

        def reply(self, status: int, error: str = "",
                  answer: dict[str, object] | None = None) -> None:
            body = json.dumps({"error": error} if error else answer).encode() + b"\n"
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # no access log: the answers say it all

    return HTTPServer((HOST, port), Handler)
