"""Reading a split: every row is checked, and a bad one is one line naming its file and line."""

import json

import pytest

from tunebook.dataset import read_split

USER = {"role": "user", "content": "What does json.dumps return?"}
ANSWER = {"role": "assistant", "content": "A str."}


@pytest.mark.parametrize(
    "row, problem",
    [
        ('{"id": "a", "messages": [', "not a JSON object (Expecting value at column 26)"),
        ("[1, 2]", "not a JSON object (got a list)"),
        ({"id": "a"}, "no 'messages' list (expected [{'role': ..., 'content': ...}, ...])"),
        ({"id": "a", "messages": "What?"}, "no 'messages' list"),
        ({"id": "a", "messages": [USER, "A str."]}, "messages[1] is not a {'role', 'content'} turn"),
        ({"id": "a", "messages": [USER, {"role": "bot", "content": "A str."}]}, "messages[1] is not a {'role'"),
        ({"id": "a", "messages": [{"role": "user", "content": None}, ANSWER]}, "messages[0] is not a {'role'"),
        ({"id": "a", "messages": [ANSWER]}, "messages must end with a user turn and the assistant's answer to it"),
        ({"id": "a", "messages": [ANSWER, USER]}, "messages must end with a user turn and the assistant's answer"),
        ({"id": "a", "messages": [USER, {"role": "assistant", "content": " \n"}]}, "empty assistant turn"),
        ({"messages": [USER, ANSWER]}, "no 'id' string"),
    ],
)
def test_a_bad_split_row_is_one_line_naming_file_and_line(tmp_path, row, problem):
    good = {"id": "g", "messages": [{"role": "system", "content": "Be brief."}, USER, ANSWER]}
    line = row if isinstance(row, str) else json.dumps(row)
    (tmp_path / "test.jsonl").write_text(f"{json.dumps(good)}\n\n{line}\n")
    with pytest.raises(ValueError) as err:
        read_split(tmp_path, "test")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'test.jsonl'}:3: {problem}")
