"""A finished request leaves the batch but keeps its blocks until the whole run ends: memory stays held by requests that are done."""
MODULE = "serving"


def _finish(self, request):
    self.finished[request.id] = request
    self._done_holding = getattr(self, "_done_holding", []) + [request]
    if not self.waiting and not self.running:          # everything is done: only now give the blocks back
        for r in self._done_holding:
            if r.holds_blocks:
                self.cache.free(r.id)
                r.holds_blocks = False


Engine._finish = _finish
