"""The action parser: every action kind and every malformed turn, with the exact observation."""

import pytest

from deepeyes_gym.envs.actions import ERRORS, parse_action

CODE = "<code>\n```python\nprint(image_1.size)\n```\n</code>"
SEARCH = '<tool_call>{"name": "search", "arguments": {"query": "red fox"}}</tool_call>'

NO_ACTION = (
    "Error: no action found. End your turn with exactly one action: "
    '<code>```python ... ```</code>, <tool_call>{"name": ..., "arguments": {...}}</tool_call> '
    "or <answer>...</answer>."
)
NO_FENCE = (
    "Error: the code must be a fenced Python block inside the code tags, like\n"
    "<code>\n```python\nprint(image_1.size)\n```\n</code>"
)


def test_error_texts_are_pinned():
    assert ERRORS["no_action"] == NO_ACTION
    assert ERRORS["no_fence"] == NO_FENCE


@pytest.mark.parametrize(
    "text, kind, payload, name",
    [
        ("<think>easy</think><answer>42</answer>", "answer", "42", None),
        ("<think>a</think>\n<answer>  Paris \n</answer>\n", "answer", "Paris", None),
        (f"<think>look</think>{CODE}", "code", "print(image_1.size)", None),
        (f"<think>s</think>{SEARCH}", "tool_call", {"query": "red fox"}, "search"),
        ('<tool_call>{"name": "image_search"}</tool_call>', "tool_call", {}, "image_search"),
        # prefilled <think>: no opening tag in the model's text
        ("I should crop.</think>" + CODE, "code", "print(image_1.size)", None),
        # answer wins over code and tool call
        (f"<think>t</think>{CODE}{SEARCH}<answer>B</answer>", "answer", "B", None),
        # code wins over a tool call
        (f"<think>t</think>{SEARCH}{CODE}", "code", "print(image_1.size)", None),
        # last block of a kind wins
        ("<answer>1</answer><answer>2</answer>", "answer", "2", None),
        (
            "<code>\n```python\na=1\n```\n</code><code>\n```python\nb=2\n```\n</code>",
            "code", "b=2", None,
        ),
        (
            '<tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call>'
            '<tool_call>{"name": "search", "arguments": {"query": "b"}}</tool_call>',
            "tool_call", {"query": "b"}, "search",
        ),
        # last fence inside one code block wins
        ("<code>```python\nx=1\n```\n```python\ny=2\n```</code>", "code", "y=2", None),
        # unclosed code at a stop string / missing closing fence
        ("<think>t</think><code>\n```python\nprint(1)\n```", "code", "print(1)", None),
        ("<code>\n```python\nprint(1)\n", "code", "print(1)", None),
        ("<code>```py\nprint(2)\n```</code>", "code", "print(2)", None),
        # unclosed tool call at a stop string
        ('<tool_call>{"name": "search", "arguments": {"query": "q"}}', "tool_call", {"query": "q"}, "search"),
        # stringified arguments
        ('<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"q\\"}"}</tool_call>', "tool_call", {"query": "q"}, "search"),
        # stray whitespace
        ("\n\n  <think> x </think>  \n <answer>\n yes \n</answer>  \n", "answer", "yes", None),
        # nested tags: the innermost last block
        ("<answer><answer>7</answer></answer>", "answer", "7", None),
        # tags mentioned inside the thoughts do not act
        ("<think>maybe <answer>no</answer></think><code>```python\nz=3\n```</code>", "code", "z=3", None),
        # an empty answer is not an answer: the code or tool call beside it runs (issue 10)
        (f"<think>t</think><answer></answer>{CODE}", "code", "print(image_1.size)", None),
        (f"<think>t</think>{CODE}<answer> \n </answer>", "code", "print(image_1.size)", None),
        (f"<think>t</think><answer></answer>{SEARCH}", "tool_call", {"query": "red fox"}, "search"),
        (f"<answer></answer>{SEARCH}{CODE}", "code", "print(image_1.size)", None),
    ],
)
def test_valid_actions(text, kind, payload, name):
    action = parse_action(text)
    assert action.kind == kind, action
    assert action.payload == payload
    assert action.name == name
    assert action.error is None


@pytest.mark.parametrize(
    "text, observation",
    [
        ("", ERRORS["empty"]),
        ("   \n\t ", ERRORS["empty"]),
        ("I think the answer is 42.", NO_ACTION),
        ("<think>only thinking</think>", NO_ACTION),
        ("<think>t</think><code>print(1)</code>", NO_FENCE),
        ("<code>\n```\nprint(1)\n```\n</code>", NO_FENCE),
        ("<code>\n```python\n\n```\n</code>", "Error: the code block is empty."),
        ("<answer>42", "Error: <answer> is not closed. Give the final answer as <answer>...</answer>."),
        ("<answer>  </answer>", "Error: the answer is empty. Give the final answer as <answer>...</answer>."),
        ("<think>t</think><answer></answer>", ERRORS["empty_answer"]),
        # the code beside an empty answer is dispatched, and its own defects are reported
        ("<answer></answer><code>print(1)</code>", NO_FENCE),
        # an unclosed answer still ends nothing and blocks nothing silently
        (f"<answer>{CODE}", ERRORS["unclosed_answer"]),
        (
            '<tool_call>{"name": "search", "arguments": {"query": }</tool_call>',
            'Error: the tool call is not valid JSON (Expecting value). Use '
            '<tool_call>{"name": "<tool name>", "arguments": {...}}</tool_call>.',
        ),
        ("<tool_call>[1, 2]</tool_call>", 'Error: the tool call must be a JSON object with "name" and "arguments".'),
        ('<tool_call>{"arguments": {}}</tool_call>', 'Error: the tool call has no "name" string.'),
        ('<tool_call>{"name": 3}</tool_call>', 'Error: the tool call has no "name" string.'),
        (
            '<tool_call>{"name": "search", "arguments": [1]}</tool_call>',
            'Error: "arguments" of the tool call must be a JSON object.',
        ),
        (
            '<tool_call>{"name": "search", "arguments": "not json"}</tool_call>',
            'Error: "arguments" of the tool call must be a JSON object.',
        ),
        ("<tool_call>" + "[" * 100000 + "</tool_call>", ERRORS["bad_json"].format(detail="too deeply nested")),
        # unbalanced closing tags only
        ("</answer></code></tool_call>", NO_ACTION),
    ],
)
def test_malformed_actions(text, observation):
    action = parse_action(text)
    assert action.kind == "invalid"
    assert action.error == observation


def test_one_megabyte_of_text():
    text = "x" * 1_000_000
    assert parse_action(text).error == NO_ACTION
    big = "<think>" + "y" * 1_000_000 + "</think><answer>ok</answer>"
    assert parse_action(big).payload == "ok"


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\xfe<answer>\x80ok</answer>",
        "<answer>\ud800bad</answer>",  # lone surrogate
        "\x00\x01\x02<answer>a\x00b</answer>",
        bytes(range(256)),
        None,
        12345,
    ],
)
def test_binary_garbage_never_raises(garbage):
    action = parse_action(garbage)
    assert action.kind in ("answer", "invalid")
    if action.kind == "answer":
        action.payload.encode("utf-8")  # valid unicode


def test_surrogate_answer_is_cleaned():
    assert parse_action("<answer>\ud800bad</answer>").payload == "?bad"


def test_empty_answer_does_not_block_the_tool_in_the_env():
    from deepeyes_gym.envs import DeepEyesEnv
    from deepeyes_gym.envs.suites.builtin import toy_tasks

    env = DeepEyesEnv(toy_tasks(1), tools=("image_zoom_in_tool",), max_turns=3)
    env.reset(seed=0)
    zoom = '<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [0, 0, 64, 64]}}</tool_call>'
    obs, _, terminated, _, info = env.step(f"<think>zoom</think><answer></answer>{zoom}")
    assert not terminated and info["action_kind"] == "tool_call"
    assert obs["text"].startswith("<tool_response>") and len(obs["images"]) == 1
    obs, _, terminated, _, _ = env.step("<think>done</think><answer></answer>")
    assert not terminated and obs["text"] == ERRORS["empty_answer"]
    env.close()
