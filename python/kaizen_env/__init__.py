"""Serve a text environment to kaizen over HTTP/JSON (kaizen's remote-environment protocol 1).

Write a class with ``reset(seed, params)`` and ``step(agent, text)`` that return steps made
with :func:`request` and :func:`done`, then call :func:`serve`::

    from kaizen_env import Env, request, done, user, serve

    class Echo(Env):
        name = "echo"
        def reset(self, seed, params):
            self.messages = [user("Say something.")]
            return request("speaker", self.messages)
        def step(self, agent, text):
            return done({"speaker": [1.0 if text else 0.0]})

    serve(Echo, port=8000)

kaizen then plays it with ``[env] name = "remote"`` and ``url = "http://127.0.0.1:8000"``.
The protocol is described in kaizen's docs/environments.md. Standard library only.
"""

from .env import Env, assistant, done, request, system, user
from .server import make_server, serve

__all__ = ["Env", "request", "done", "user", "assistant", "system", "serve", "make_server"]
