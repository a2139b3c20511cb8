"""``cifar-lit serve``: the registry's production model over HTTP, on LitServe.

    cifar-lit serve --registry-dir runs/registry --port 8000
    curl -F file=@cat.png http://127.0.0.1:8000/predict
    {"model": "cifar10-airnet_s", "version": "v3", "top": [{"label": "cat", "prob": 0.91}, ...]}

``GET /health`` is 200 once a model is loaded. ``POST /predict`` takes one image as the
multipart field ``file``, or JSON ``{"image": base64}`` / ``{"images": [base64, ...]}`` (answered
with ``predictions``, one per image). Requests arriving together are batched. Bad input is a 4xx
with ``{"detail": one line}``, decided per request; the server goes on serving. When the alias
moves, the next requests are answered by the new version (``cifar_lit.serving.model.Follower``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cifar_lit.serving.inputs import USAGE


def _one_line(status: int, reason: str) -> tuple[int, bytes]:
    return status, json.dumps({"detail": reason}).encode()


class InputGuard:
    """An ASGI middleware in front of ``/predict``: the body must be at most ``max_bytes``, a
    multipart form or JSON, and parse as such. What LitServe would turn into a 500 (a body that
    is not JSON, a broken multipart form) is a 4xx here, before it reaches a worker."""

    def __init__(self, app, path: str = "/predict", max_bytes: int = 10 << 20) -> None:
        self.app, self.path, self.max_bytes = app, path, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        body, error = b"", None
        if kind not in ("multipart/form-data", "application/json"):
            error = _one_line(415, f"content type {kind or 'none'!r}: {USAGE}")
        elif int(headers.get("content-length") or 0) > self.max_bytes:
            error = _one_line(413, f"body of {headers['content-length']} bytes; the limit is {self.max_bytes}")
        else:
            body, more = [], True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body.append(message.get("body", b""))
                more = message.get("more_body", False)
                if sum(map(len, body)) > self.max_bytes:
                    error = _one_line(413, f"body over the limit of {self.max_bytes} bytes")
                    break
            body = b"".join(body)
            error = error or await self._parse_error(scope, kind, body)
        if error:
            status, payload = error
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    async def _parse_error(scope, kind: str, body: bytes) -> tuple[int, bytes] | None:
        if kind == "application/json":
            try:
                parsed = json.loads(body)
            except (ValueError, UnicodeDecodeError) as e:
                return _one_line(400, f"body is not valid JSON ({str(e).splitlines()[0][:120]})")
            return None if isinstance(parsed, dict) else _one_line(422, USAGE)
        from starlette.requests import Request

        async def once():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(scope, once).form()
            await form.close()
        except Exception as e:  # noqa: BLE001 - starlette's multipart errors have no common public base
            return _one_line(400, f"malformed multipart form ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})")
        return None


def build_server(follower_args: dict[str, Any], workers: int = 1, max_bytes: int = 10 << 20, timeout: float = 30,
                 **api_args):
    import litserve as ls

    from cifar_lit.serving.api import ClassifierAPI

    api = ClassifierAPI(follower_args, **api_args)
    return ls.LitServer(api, accelerator="cpu", workers_per_device=workers, timeout=timeout,
                        healthcheck_path="/health", middlewares=[(InputGuard, {"max_bytes": max_bytes})])


def parse_args(argv: list[str] | None, prog: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description="Serve the registry's production model over HTTP "
                                "(GET /health, POST /predict with the multipart field 'file').")
    p.add_argument("--registry-dir", type=Path, default=Path("runs/registry"))
    p.add_argument("--name", help="the model (default: the registry's only one)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--alias", default="production", choices=("production", "latest"),
                       help="serve the version this alias names, and follow it when it moves (default: production)")
    which.add_argument("--version", help="serve this version (vN) and nothing else")
    p.add_argument("--onnx", action="store_true", help="answer through onnxruntime from model.onnx")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="inference processes")
    p.add_argument("--max-batch-size", type=int, default=16, help="requests answered by one forward pass")
    p.add_argument("--batch-timeout", type=float, default=0.005, help="seconds a request waits for others to batch with")
    p.add_argument("--max-bytes", type=int, default=10 << 20, help="the largest request body (default 10 MiB)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="the largest image, in pixels")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between checks of the alias")
    args = p.parse_args(argv)
    for field in ("workers", "max_batch_size", "max_bytes", "max_pixels", "port"):
        if getattr(args, field) < 1:
            p.error(f"--{field.replace('_', '-')}: must be at least 1")
    if args.poll <= 0 or args.batch_timeout < 0:
        p.error("--poll must be above 0 and --batch-timeout at least 0")
    return args


def main(argv: list[str] | None = None, prog: str = "cifar-lit serve") -> int:
    args = parse_args(argv, prog)
    follower_args = {"registry": args.registry_dir, "name": args.name, "alias": args.alias, "version": args.version,
                     "onnx": args.onnx, "poll": args.poll}
    from cifar_lit.errors import UserError
    from cifar_lit.serving.model import Follower

    try:  # here, before any worker starts: a wrong registry, name, alias or file is one line
        served = Follower(**follower_args).current()
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    try:
        import litserve  # noqa: F401
    except ImportError:
        print(f"{prog}: error: serving needs LitServe: pip install 'cifar-lit[serve]'", file=sys.stderr)
        return 2
    follower_args["name"] = served.name
    print(f"{prog}: {served.name} {served.version} ({args.version or args.alias}, {served.runtime}) on "
          f"http://{args.host}:{args.port}/predict", flush=True)
    server = build_server(follower_args, workers=args.workers, max_bytes=args.max_bytes,
                          max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout, max_pixels=args.max_pixels)
    server.run(host=args.host, port=args.port, generate_client_file=False, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m cifar_lit.serving.app"))
