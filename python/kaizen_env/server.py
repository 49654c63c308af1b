"""A threaded HTTP server for kaizen's remote-environment protocol 1 (standard library only).

Endpoints: ``GET /info``, ``POST /reset {seed, params}``, ``POST /step {episode_id, agent,
text}``. Failures reply with a non-2xx status and ``{"error": "..."}``.
"""

import argparse
import json
import sys
import threading
import traceback
import uuid
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROTOCOL_VERSION = 1
MAX_REQUEST_BYTES = 16 << 20


class ProtocolError(Exception):
    """A bad request from the client (HTTP 4xx)."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def _check_step(step):
    """Checks a step dict before it is sent, so that mistakes surface in the environment."""
    if not isinstance(step, dict) or step.get("kind") not in ("request", "done"):
        raise TypeError(f"a step must be request(...) or done(...), got {step!r:.200}")
    if step["kind"] == "request":
        if not step.get("messages"):
            raise TypeError("a request needs at least one message")
        for m in step["messages"]:
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise TypeError(f"bad message {m!r:.200}: use user(), assistant() or system()")
    return step


class _Episodes:
    """Live episodes, oldest evicted first beyond ``capacity``."""

    def __init__(self, capacity):
        self.capacity = capacity
        self.lock = threading.Lock()
        self.items = OrderedDict()

    def add(self, env):
        episode_id = uuid.uuid4().hex
        with self.lock:
            self.items[episode_id] = (env, threading.Lock())
            while len(self.items) > self.capacity:
                self.items.popitem(last=False)
        return episode_id

    def get(self, episode_id):
        with self.lock:
            item = self.items.get(episode_id)
            if item is not None:
                self.items.move_to_end(episode_id)
        return item

    def remove(self, episode_id):
        with self.lock:
            self.items.pop(episode_id, None)


def make_server(factory, host="127.0.0.1", port=0, max_episodes=1024, name=None, description=None):
    """An HTTP server (not started) that makes one ``factory()`` environment per episode."""
    episodes = _Episodes(max_episodes)
    sample = factory()
    info = {
        "name": name or getattr(sample, "name", "env"),
        "description": description or getattr(sample, "description", ""),
        "protocol": PROTOCOL_VERSION,
    }

    def reset(body):
        seed = body.get("seed")
        if not isinstance(seed, int) or seed < 0:
            raise ProtocolError(400, f"`seed` must be a non-negative integer, got {seed!r}")
        params = body.get("params") or {}
        env = factory()
        step = _check_step(env.reset(seed, params))
        episode_id = episodes.add(env) if step["kind"] == "request" else uuid.uuid4().hex
        pending = step["kind"] == "request"
        return {
            "episode_id": episode_id,
            "step": step,
            "expert": env.expert() if pending else None,
            "hint": env.hint() if pending else None,
        }

    def step(body):
        for field, kind in (("episode_id", str), ("agent", str), ("text", str)):
            if not isinstance(body.get(field), kind):
                raise ProtocolError(400, f"`{field}` must be a string")
        item = episodes.get(body["episode_id"])
        if item is None:
            raise ProtocolError(404, f"unknown episode {body['episode_id']!r} (finished, evicted or never started)")
        env, lock = item
        with lock:
            result = _check_step(env.step(body["agent"], body["text"]))
            pending = result["kind"] == "request"
            expert = env.expert() if pending else None
            hint = env.hint() if pending else None
        if result["kind"] == "done":
            episodes.remove(body["episode_id"])
        return {"step": result, "expert": expert, "hint": hint}

    routes = {("GET", "/info"): lambda _: info, ("POST", "/reset"): reset, ("POST", "/step"): step}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm
        # and the client's delayed ACK add ~40 ms to every reply.
        disable_nagle_algorithm = True

        def log_message(self, format, *args):  # quiet: one line per request is too much
            pass

        def _reply(self, status, payload):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, method):
            route = routes.get((method, self.path.rstrip("/") or "/"))
            try:
                if route is None:
                    raise ProtocolError(404, f"no endpoint {method} {self.path}")
                body = {}
                if method == "POST":
                    length = int(self.headers.get("Content-Length") or 0)
                    if length > MAX_REQUEST_BYTES:
                        raise ProtocolError(413, f"request larger than {MAX_REQUEST_BYTES} bytes")
                    try:
                        body = json.loads(self.rfile.read(length) or b"{}")
                    except ValueError as e:
                        raise ProtocolError(400, f"body is not JSON: {e}")
                    if not isinstance(body, dict):
                        raise ProtocolError(400, "body must be a JSON object")
                self._reply(200, route(body))
            except ProtocolError as e:
                self._reply(e.status, {"error": str(e)})
            except Exception as e:  # the environment failed: report it, keep serving
                traceback.print_exc(file=sys.stderr)
                self._reply(500, {"error": f"{type(e).__name__}: {e}"})

        def do_GET(self):
            self._handle("GET")

        def do_POST(self):
            self._handle("POST")

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve(factory, host="127.0.0.1", port=0, **kwargs):
    """Serves ``factory``'s environments until interrupted. Prints the URL on the first line of
    stdout (``kaizen-env listening on http://HOST:PORT``); port 0 picks a free port."""
    server = make_server(factory, host, port, **kwargs)
    print(f"kaizen-env listening on http://{server.server_address[0]}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def command_line(description):
    """The ``--host`` / ``--port`` arguments every example takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    return parser
