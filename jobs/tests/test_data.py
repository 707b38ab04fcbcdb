"""Dataset readers (no torch): kto rows, JSON arrays, .txt, canonical rows, tool messages, split_validation."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from refinery_jobs import contract, data  # noqa: E402


def write(text: str, suffix: str = ".jsonl") -> str:
    fd, path = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def jsonl(rows) -> str:
    return write("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


class KtoTest(unittest.TestCase):
    def test_string_and_message_forms(self):
        path = jsonl([
            {"prompt": "Hi", "completion": "Hello", "label": True},
            {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Go away"}],
             "label": False},
        ])
        fmt, rows = data.load_rows(path, "kto", ("kto",))
        self.assertEqual(fmt, "kto")
        self.assertEqual(rows[0], {"prompt": [{"role": "user", "content": "Hi"}],
                                   "completion": [{"role": "assistant", "content": "Hello"}], "label": True})
        self.assertIs(rows[1]["label"], False)

    def test_detected(self):
        path = jsonl([{"prompt": "Hi", "completion": "Hello", "label": True}])
        self.assertEqual(data.load_rows(path, None, ("sft", "kto"))[0], "kto")

    def test_label_must_be_boolean(self):
        path = jsonl([{"prompt": "Hi", "completion": "Hello", "label": True},
                      {"prompt": "Hi", "completion": "Hello", "label": 1}])
        with self.assertRaises(contract.JobError) as ctx:
            data.load_rows(path, "kto", ("kto",))
        self.assertEqual((ctx.exception.line, ctx.exception.field), (2, "label"))

    def test_completion_is_assistant_only(self):
        path = jsonl([{"prompt": "Hi", "completion": [{"role": "user", "content": "x"}], "label": True}])
        with self.assertRaises(contract.JobError) as ctx:
            data.load_rows(path, "kto", ("kto",))
        self.assertEqual(ctx.exception.field, "completion[0].role")


class RecordLayoutTest(unittest.TestCase):
    def test_json_array_streamed_with_start_lines(self):
        path = write('[\n  {"text": "a ]} \\" ["},\n  {\n    "text": "b"\n  }, {"text": "c"}\n]\n', ".json")
        self.assertEqual(list(data._read_records(path)), [(2, {"text": 'a ]} " ['}), (3, {"text": "b"}), (5, {"text": "c"})])
        self.assertEqual(data.load_rows(path, "text", ("text",))[1], [{"text": 'a ]} " ['}, {"text": "b"}, {"text": "c"}])

    def test_json_lines_in_a_json_file_and_bom(self):
        path = write('\ufeff{"text": "a"}\n\n{"text": "b"}\n', ".json")
        self.assertEqual(list(data._read_records(path)), [(1, {"text": "a"}), (3, {"text": "b"})])

    def test_txt_one_text_per_line(self):
        path = write("One.\r\n\nTwo {not json}\n", ".txt")
        self.assertEqual(data.load_rows(path, "text", ("text",))[1], [{"text": "One."}, {"text": "Two {not json}"}])

    def test_array_problems_name_the_line(self):
        cases = [
            ('[{"text": "a"}\n{"text": "b"}]', 2, "expected \",\" or \"]\" after the record that starts on line 1"),
            ('[{"text": "a"},\n{"text": ', 2, "invalid JSON"),
            ('[{"text": "a"},\n', 2, "the JSON array is not closed"),
            ('[{"text": "a"}]\nx', 2, "after the end of the JSON array"),
            ('[{"text": "a"},\n 3]', 2, "expected a JSON object, got a number"),
        ]
        for text, line, fragment in cases:
            with self.subTest(text=text), self.assertRaises(contract.JobError) as ctx:
                data.load_rows(write(text, ".json"), "text", ("text",))
            self.assertEqual(ctx.exception.line, line)
            self.assertIn(fragment, ctx.exception.message)

    def test_oversized_array_element_refused(self):
        big = json.dumps({"text": "a" * (data.MAX_LINE_BYTES + 10)})
        path = write(f'[{{"text": "ok"}},\n{big}]', ".json")
        with self.assertRaises(contract.JobError) as ctx:
            data.load_rows(path, "text", ("text",))
        self.assertEqual(ctx.exception.line, 2)
        self.assertIn("longer than 10 MB", ctx.exception.message)

    def test_element_split_across_read_chunks(self):
        rows = [{"text": "x" * 5000 + str(i)} for i in range(600)]  # ~3 MB: several 1 MiB reads
        path = write(json.dumps(rows, indent=1), ".json")
        self.assertEqual(data.load_rows(path, "text", ("text",))[1], rows)


TOOL_ROW = {
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "{\"temp\": 21}"},
        {"role": "assistant", "content": "21 degrees."},
    ],
    "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
}


class CanonicalRowsTest(unittest.TestCase):
    def test_tool_calls_and_tools_read_as_written(self):
        self.assertEqual(data.load_rows(jsonl([TOOL_ROW]), "chat", ("chat",))[1], [TOOL_ROW])

    def test_tool_call_problems(self):
        bad = json.loads(json.dumps(TOOL_ROW))
        bad["messages"][0]["tool_calls"] = bad["messages"][1]["tool_calls"]
        with self.assertRaises(contract.JobError) as ctx:
            data.load_rows(jsonl([bad]), "chat", ("chat",))
        self.assertEqual(ctx.exception.field, "messages[0].tool_calls")
        empty = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}
        with self.assertRaises(contract.JobError) as ctx:
            data.load_rows(jsonl([empty]), "chat", ("chat",))
        self.assertEqual(ctx.exception.field, "messages[1].content")

    def test_canonical_preference_prompts_kto(self):
        msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
        a = [{"role": "assistant", "content": "A"}]
        b = [{"role": "assistant", "content": "B"}]
        self.assertEqual(data.load_rows(jsonl([{"prompt": msgs, "chosen": a, "rejected": b}]), "preference", ("preference",))[1],
                         [{"prompt": msgs, "chosen": a, "rejected": b}])
        self.assertEqual(data.load_rows(jsonl([{"prompt": msgs}]), "prompts", ("prompts",))[1], [{"prompt": msgs}])
        self.assertEqual(data.load_rows(jsonl([{"prompt": msgs, "completion": a, "label": False}]), "kto", ("kto",))[1],
                         [{"prompt": msgs, "completion": a, "label": False}])

    def test_sharegpt_tool_turns(self):
        row = {"conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": "{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}"},
            {"from": "observation", "value": "{\"temp\": 21}"},
            {"from": "gpt", "value": "21 degrees."}],
            "tools": "[{\"name\": \"weather\", \"parameters\": {\"type\": \"object\"}}]"}
        self.assertEqual(data.load_rows(jsonl([row]), "sharegpt", ("sharegpt",))[1], [TOOL_ROW])

    def test_todays_rows_still_read(self):
        self.assertEqual(data.load_rows(jsonl([{"instruction": "Add.", "input": "1+1", "output": "2"}]), "alpaca", ("alpaca",))[1],
                         [{"messages": [{"role": "user", "content": "Add.\n\n1+1"}, {"role": "assistant", "content": "2"}]}])
        self.assertEqual(data.load_rows(jsonl([{"prompt": "Hi"}]), "prompts", ("prompts",))[1],
                         [{"prompt": [{"role": "user", "content": "Hi"}]}])


class SplitValidationTest(unittest.TestCase):
    rows = list(range(100))

    def test_fraction_and_count(self):
        train, held = data.split_validation(self.rows, 0.1, 42)
        self.assertEqual((len(train), len(held)), (90, 10))
        self.assertEqual(sorted(train + held), self.rows)
        self.assertEqual(train, sorted(train))  # train keeps file order
        train, held = data.split_validation(self.rows, 7, 42)
        self.assertEqual((len(train), len(held)), (93, 7))

    def test_deterministic_by_seed(self):
        self.assertEqual(data.split_validation(self.rows, 0.2, 1), data.split_validation(self.rows, 0.2, 1))
        self.assertNotEqual(data.split_validation(self.rows, 0.2, 1)[1], data.split_validation(self.rows, 0.2, 2)[1])

    def test_none_and_limits(self):
        self.assertEqual(data.split_validation(self.rows, None, 0), (self.rows, []))
        self.assertEqual(data.split_validation(self.rows, 0, 0), (self.rows, []))
        self.assertEqual(len(data.split_validation(list(range(5)), 0.01, 0)[1]), 1)  # at least one row
        with self.assertRaises(contract.JobError):
            data.split_validation(self.rows, 100, 0)
        with self.assertRaises(contract.JobError):
            data.split_validation(self.rows, 2.5, 0)


if __name__ == "__main__":
    unittest.main()
