"""The LitAPI of ``cifar-lit serve``: decode in the worker, one forward pass per batch, a 4xx
per bad request. Module level, as LitServe's worker processes are spawned and unpickle it."""

from __future__ import annotations

import logging
from typing import Any

import litserve as ls
from fastapi.responses import JSONResponse

from cifar_lit.serving.inputs import Images, Rejected, decode_request
from cifar_lit.serving.model import Follower

log = logging.getLogger(__name__)

TOP_K = 3  # as the predict flow's CSV: top1..top3


class ClassifierAPI(ls.LitAPI):
    def __init__(self, follower_args: dict[str, Any], max_batch_size: int = 16, batch_timeout: float = 0.005,
                 max_pixels: int = 40_000_000, max_images: int = 64) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.follower_args, self.max_pixels, self.max_images = follower_args, max_pixels, max_images
        self.batched = max_batch_size > 1  # LitServe hands predict a list only then

    def setup(self, device) -> None:
        self.follower = Follower(**self.follower_args).start()
        served = self.follower.current()
        log.warning("serving %s %s (%s) on %s", served.name, served.version, served.runtime, device)

    def decode_request(self, request, **kwargs):
        return decode_request(request, self.max_pixels, self.max_images)

    def batch(self, inputs):
        return list(inputs)

    def unbatch(self, output):
        return output

    def predict(self, x, **kwargs):
        requests = x if self.batched else [x]
        served = self.follower.current()  # one version answers the whole batch
        images = [im for r in requests if isinstance(r, Images) for im in r.images]
        tops = iter(served.top(served.probabilities(images), TOP_K) if images else [])
        out = []
        for r in requests:
            if isinstance(r, Rejected):
                out.append(r)
                continue
            answers = [next(tops) for _ in r.images]
            body = {"predictions": [{"top": t} for t in answers]} if r.batch else {"top": answers[0]}
            out.append({"model": served.name, "version": served.version} | body)
        return out if self.batched else out[0]

    def encode_response(self, output, **kwargs):
        if isinstance(output, Rejected):  # its own status, whatever else was in the batch
            return JSONResponse({"detail": output.reason}, status_code=output.status)
        return output
