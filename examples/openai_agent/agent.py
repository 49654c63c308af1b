"""An agent program for kaizen's `openai_agent` environment.

kaizen starts it once per episode with OPENAI_BASE_URL and OPENAI_API_KEY pointing at the
policy, so an unmodified OpenAI client talks to the model being trained. The program plays
two turns of a toy task (write words made of lowercase letters), sending each answer back as
the assistant message, and reports its reward: printed as the last JSON line on stdout, or
POSTed to $KAIZEN_REWARD_URL when REWARD_VIA=post.

    [[env]]
    name = "openai_agent"
    [env.params]
    command = "python3"
    args = ["examples/openai_agent/agent.py"]
"""

import json
import os
import urllib.request

import openai

WORDS = ["apple", "river", "stone", "cloud"]


def score(text):
    """Fraction of the answer's characters that are lowercase ASCII letters."""
    return sum(c.isascii() and c.islower() for c in text) / max(len(text), 1)


def main():
    client = openai.OpenAI(max_retries=0)
    seed = int(os.environ.get("KAIZEN_EPISODE_SEED", "0"))
    messages = [{"role": "user", "content": f"Write one word like '{WORDS[seed % len(WORDS)]}'."}]
    answers = []
    for _ in range(2):
        reply = client.chat.completions.create(model="policy", messages=messages, max_tokens=8)
        text = reply.choices[0].message.content
        answers.append(text)
        # Sent back unchanged, the answer continues the policy's token thread.
        messages += [{"role": "assistant", "content": text},
                     {"role": "user", "content": "Another one, please."}]
    reward = sum(map(score, answers)) / len(answers)
    if os.environ.get("REWARD_VIA") == "post":
        request = urllib.request.Request(
            os.environ["KAIZEN_REWARD_URL"], data=json.dumps({"reward": reward}).encode(),
            headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request).read()
    else:
        print(json.dumps({"reward": reward, "answers": answers}))


if __name__ == "__main__":
    main()
