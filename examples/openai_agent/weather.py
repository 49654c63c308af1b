"""A tool-using agent for kaizen's `openai_agent` environment: answer with a weather tool.

kaizen starts it once per episode with OPENAI_BASE_URL pointing at the policy being trained.
The agent asks "What is the weather in Oslo?" offering one tool, `get_weather(city)`. When the
model calls it, the agent answers the call with a `tool` message — that episode's weather for
the city, drawn from the episode seed, so no model can know it without the call — and asks
again for the answer. Its reward (printed as the last JSON line) is

    0.25 * [the first turn calls get_weather for a city it knows]
  + 0.25 * [for the city asked about]
  + 0.5  * [the final answer is the weather the tool reported]

with its parts (`called`, `called_right`, `answered_right`) as the episode's metrics.

    python3 weather.py --demos 256 --guess-share 0.5 > demos.jsonl

writes demonstrations in OpenAI's chat fine-tuning format (`tools` included) for a warm start
(`[sft] source = "demos.jsonl"`), from seeds the episodes never use. A `--guess-share` of them
answer at once with a guessed weather instead of calling the tool: a demonstrator that often
does not bother, so the warm-started policy calls the tool about that much less often, and
reinforcement learning on its own episodes has to find out that calling pays.
"""

import argparse
import json
import os
import random

CITIES = ["Oslo", "Paris", "Tokyo", "Lima", "Cairo", "Delhi"]
WEATHER = ["Hot", "Rain", "Snow", "Wind"]
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Today's weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}]

# Demonstrations come from seeds at and above this; episodes use kaizen's seeds, below it.
DEMO_SEEDS = 1 << 40


def world(seed):
    """The city asked about and each city's weather in this episode."""
    rng = random.Random(seed)
    return rng.choice(CITIES), {city: rng.choice(WEATHER) for city in CITIES}


def get_weather(weather, arguments):
    """The tool: the weather of a known city, or an error naming what was wrong."""
    try:
        city = json.loads(arguments).get("city")
    except (json.JSONDecodeError, AttributeError):
        return None, 'error: arguments must be {"city": "..."}'
    if city not in weather:
        return None, f"error: unknown city {city!r}"
    return city, weather[city]


def episode(seed):
    import openai

    client = openai.OpenAI(max_retries=0)
    city, weather = world(seed)
    messages = [{"role": "user", "content": f"What is the weather in {city}?"}]
    reply = client.chat.completions.create(model="policy", messages=messages, tools=TOOLS,
                                           max_tokens=96)
    message = reply.choices[0].message
    called, called_right, reported = False, False, None
    if message.tool_calls:
        # Sent back as received: the next turn continues the policy's own token thread.
        messages.append({"role": "assistant", "content": message.content,
                         "tool_calls": [c.model_dump() for c in message.tool_calls]})
        for call in message.tool_calls:
            asked, result = (get_weather(weather, call.function.arguments)
                             if call.function.name == "get_weather"
                             else (None, "error: unknown tool"))
            called |= asked is not None
            if asked == city:
                called_right, reported = True, result
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        reply = client.chat.completions.create(model="policy", messages=messages, tools=TOOLS,
                                               max_tokens=8)
        message = reply.choices[0].message
    answer = (message.content or "").strip()
    answered_right = reported is not None and answer == reported and not message.tool_calls
    reward = 0.25 * called + 0.25 * called_right + 0.5 * answered_right
    # The parts of the reward are logged as the episode's metrics (env/called, ...).
    print(json.dumps({"reward": reward, "metrics": {
        "called": float(called), "called_right": float(called_right),
        "answered_right": float(answered_right)}}))


def demonstrations(count, guess_share):
    for i in range(count):
        seed = DEMO_SEEDS + i
        city, weather = world(seed)
        if random.Random(-seed).random() < guess_share:
            guess = random.Random(seed + 1).choice(WEATHER)
            yield {"tools": TOOLS, "messages": [
                {"role": "user", "content": f"What is the weather in {city}?"},
                {"role": "assistant", "content": guess},
            ]}
            continue
        call = {"id": "call_0", "type": "function",
                "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}
        yield {"tools": TOOLS, "messages": [
            {"role": "user", "content": f"What is the weather in {city}?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_0", "content": weather[city]},
            {"role": "assistant", "content": weather[city]},
        ]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demos", type=int, help="print this many demonstrations and exit")
    parser.add_argument("--guess-share", type=float, default=0.0,
                        help="share of demonstrations that guess instead of calling the tool")
    args = parser.parse_args()
    if args.demos is not None:
        for demo in demonstrations(args.demos, args.guess_share):
            print(json.dumps(demo))
    else:
        episode(int(os.environ.get("KAIZEN_EPISODE_SEED", "0")))


if __name__ == "__main__":
    main()
