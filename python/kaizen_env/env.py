"""The environment interface and the step constructors."""


class Env:
    """One episode at a time, like kaizen's Rust ``Env`` trait.

    The server makes one instance per episode (``factory()``), calls :meth:`reset` once and
    :meth:`step` for every answer until a ``done`` step. Exceptions become HTTP 500 replies,
    which end only that episode on kaizen's side.
    """

    #: Shown by ``GET /info``.
    name = "env"
    #: One line, shown by ``GET /info``.
    description = ""

    def reset(self, seed, params):
        """Start the episode for ``seed`` (same seed, same episode); return the first step."""
        raise NotImplementedError

    def step(self, agent, text):
        """Take ``agent``'s answer ``text``; return the next step."""
        raise NotImplementedError

    def expert(self):
        """What an expert would answer to the pending request, or None."""
        return None

    def hint(self):
        """A hint that lets the policy reach the right answer to the pending request (the gold
        answer), shown only when kaizen rationalises (STaR), or None."""
        return None


def _message(role, content):
    if not isinstance(content, str):
        raise TypeError(f"message content must be a string, got {type(content).__name__}")
    return {"role": role, "content": content}


def user(content):
    """A user message (the environment speaking)."""
    return _message("user", content)


def assistant(content):
    """An assistant message (the model's earlier answer, verbatim)."""
    return _message("assistant", content)


def system(content):
    """A system message."""
    return _message("system", content)


def request(agent, messages, trainable=True, sampling=None):
    """The next turn: ``agent`` must answer the conversation ``messages`` (oldest first).

    To continue an agent's conversation, send its earlier messages unchanged, then its answer
    as ``assistant(text)``, then the new messages: kaizen then keeps the tokens it sampled.
    ``sampling`` may set temperature, top_p, top_k, min_p, max_new_tokens, stop, and
    choices (the reply must be one of these texts).
    """
    return {
        "kind": "request",
        "agent": str(agent),
        "messages": list(messages),
        "trainable": bool(trainable),
        "sampling": dict(sampling or {}),
    }


def done(rewards, metrics=None, info=None):
    """The end: ``rewards[agent][k]`` is the reward of the agent's k-th answered request."""
    return {
        "kind": "done",
        "rewards": {str(a): [float(r) for r in rs] for a, rs in rewards.items()},
        "metrics": {str(k): float(v) for k, v in (metrics or {}).items()},
        "info": info,
    }
