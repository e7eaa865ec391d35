"""Binding tasks (schemas, loader, prompts, answer tokens) and task accuracy, on tiny:llama and (marked real) Qwen."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from cli_helpers import assert_one_sentence

from mechkit.errors import MechkitError
from mechkit.models.tiny import byte_tokenizer
from mechkit.probes.binding import task_accuracy
from mechkit.tasks.binding import (
    BindingQuery,
    BindingSchema,
    builtin_tasks,
    encode_prompts,
    get_task,
    load_schemas,
    make_prompts,
    schema_from_dict,
)

SMALL = {
    "name": "small",
    "description": "a test schema",
    "roles": {"object": ["apple", "key", "coin"], "box": ["A", "B", "C"]},
    "clause": "The {object} is in Box {box}.",
    "queries": [{"name": "box", "question": "Which box is the {object} in?", "answer_role": "box",
                 "answer_prefix": "Box "}],
}
TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}<assistant>"


# --- schemas and the loader --------------------------------------------------------------------------------------


def test_builtin_tasks_are_six_valid_schemas_with_their_queries():
    tasks = builtin_tasks()
    assert list(tasks) == ["boxes", "people_objects_locations", "containers_liquids", "code_dict",
                           "train_platforms", "pets"]
    for name, schema in tasks.items():
        assert get_task(name) is schema and schema.max_groups() >= 9
        for query in schema.queries:
            prompt = make_prompts(schema, 3, 1, seed=0, query=query.name)[0]
            text, continuations = prompt.render()
            lead = query.answer_prefix.format(**prompt.groups[0]).rstrip()
            assert text.startswith(prompt.context + "\n") and text.endswith(lead) and prompt.answer in prompt.context
            assert [c.strip() for c in continuations] == list(prompt.candidates)


def test_schema_files_round_trip_as_json_and_jsonl(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps(SMALL))
    (tmp_path / "two.jsonl").write_text(json.dumps(SMALL) + "\n\n" + json.dumps({**SMALL, "name": "other"}) + "\n")
    (tmp_path / "list.json").write_text(json.dumps([SMALL, {**SMALL, "name": "other"}], indent=2))
    expected = schema_from_dict(SMALL)
    assert load_schemas(tmp_path / "one.json") == [expected]
    assert [s.name for s in load_schemas(tmp_path / "two.jsonl")] == ["small", "other"]
    assert load_schemas(tmp_path / "list.json")[0] == expected
    assert expected.separator == " " and expected.prefix == "" and expected.queries[0].answer_prefix == "Box "


@pytest.mark.parametrize("content, parts", [
    (json.dumps(SMALL) + '\n{"name": ', ["line 2", "not valid JSON"]),
    (json.dumps({**SMALL, "clause": None}), ["line 1", "'clause' is missing"]),
    (json.dumps({**SMALL, "queries": [{**SMALL["queries"][0], "answer_role": "colour"}]}),
     ["line 1", "queries[0].answer_role", "'colour'"]),
    (json.dumps({**SMALL, "queries": [{**SMALL["queries"][0], "question": "Which box is {box}?"}]}),
     ["queries[0].question", "{box}"]),
    (json.dumps({**SMALL, "clause": "The {object} is in a box."}), ["'clause' must name every role"]),
    (json.dumps({**SMALL, "roles": {"object": ["apple", "A"], "box": ["A", "B"]}}), ["'A' appears twice"]),
    (json.dumps({**SMALL, "roles": {"object": ["apple", " key"], "box": ["A", "B"]}}), ["roles.object", "' key'"]),
    (json.dumps({**SMALL, "clause": "The {object!r} is in {box}"}), ["'clause'", "{object}"]),
    (json.dumps({**SMALL, "colour": "red"}), ["unknown field 'colour'"]),
], ids=["json-syntax", "missing-field", "unknown-answer-role", "question-names-answer", "clause-misses-role",
        "entity-in-two-roles", "entity-whitespace", "format-spec", "unknown-field"])
def test_malformed_schema_file_names_the_line_and_field(tmp_path, content, parts):
    path = tmp_path / "tasks.jsonl"
    path.write_text(content + "\n")
    with pytest.raises(MechkitError) as err:
        load_schemas(path)
    assert_one_sentence(err, str(path), *parts)


def test_malformed_json_file_names_line_and_column(tmp_path):
    path = tmp_path / "tasks.json"
    path.write_text('{\n  "name": "x",\n  "roles" {}\n}')
    with pytest.raises(MechkitError) as err:
        load_schemas(path)
    assert_one_sentence(err, "line 3, column 11")


def test_unknown_task_name_lists_the_builtins():
    with pytest.raises(MechkitError) as err:
        make_prompts("boxs", 3, 1)
    assert_one_sentence(err, "'boxs'", "boxes", "code_dict")
    with pytest.raises(MechkitError) as err:
        make_prompts("boxes", 3, 1, query="nope")
    assert_one_sentence(err, "'nope'", "box_of_object")


# --- prompts -----------------------------------------------------------------------------------------------------


def test_more_groups_than_entities_is_refused():
    with pytest.raises(MechkitError) as err:
        make_prompts("train_platforms", 10, 4)
    assert_one_sentence(err, "n_groups=10", "'platform' has 9 entities")
    with pytest.raises(MechkitError):
        make_prompts("boxes", 1, 4)


def test_prompts_are_seeded_balanced_and_distinct_per_role():
    prompts = make_prompts("people_objects_locations", 4, 12, seed=3)
    assert [p.groups for p in prompts] == [p.groups for p in make_prompts("people_objects_locations", 4, 12, seed=3)]
    assert [p.groups for p in prompts[:5]] == [p.groups for p in make_prompts("people_objects_locations", 4, 5, 3)]
    assert [p.groups for p in prompts] != [p.groups for p in make_prompts("people_objects_locations", 4, 12, seed=4)]
    assert Counter(p.query_position for p in prompts) == {0: 3, 1: 3, 2: 3, 3: 3}
    for prompt in prompts:
        for role in ("person", "object", "location"):
            assert len({g[role] for g in prompt.groups}) == 4
    assert {p.query_position for p in make_prompts("boxes", 5, 6, query_position=-1)} == {4}


def test_plain_and_chat_rendering_move_the_space_into_the_answer():
    prompt = make_prompts(schema_from_dict(SMALL), 2, 1, seed=0)[0]
    (o1, b1), (o2, b2) = [(g["object"], g["box"]) for g in prompt.groups]
    context = f"The {o1} is in Box {b1}. The {o2} is in Box {b2}."
    question = f"Which box is the {prompt.groups[0]['object']} in?"
    assert prompt.render() == (f"{context}\n{question} Box", (f" {b1}", f" {b2}"))
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = TEMPLATE
    chat = prompt.render(tokenizer, chat=True)
    assert chat == (f"<user>{context}\n{question}</user><assistant>Box", (f" {b1}", f" {b2}"))


# --- answer tokens -----------------------------------------------------------------------------------------------


def test_encoded_prompt_is_the_text_and_shared_tokens_then_each_answer_token(tiny_nnsight):
    prompts = make_prompts("boxes", 3, 4, seed=0)
    enc = encode_prompts(tiny_nnsight, prompts)
    assert enc.chat is False and enc.candidate_ids.shape == (4, 3)
    assert enc.answer_index.tolist() == [0, 1, 2, 0]
    tok = tiny_nnsight.tokenizer
    for row, prompt in enumerate(prompts):
        text, _ = prompt.render()
        ids = enc.batch.tokens[row][enc.batch.attention_mask[row].bool()].tolist()
        # byte tokens: "...Box" then the shared " " (appended to the prompt), then the letters differ
        assert ids == [tok.bos_token_id] + tok(text + " ", add_special_tokens=False)["input_ids"]
        letters = tok.convert_ids_to_tokens(enc.candidate_ids[row].tolist())
        assert letters == list(prompt.candidates)


def test_chat_template_is_used_when_the_tokenizer_has_one(tiny_nnsight, monkeypatch):
    monkeypatch.setattr(tiny_nnsight.tokenizer, "chat_template", TEMPLATE, raising=False)
    prompts = make_prompts("boxes", 2, 2, seed=0)
    enc = encode_prompts(tiny_nnsight, prompts)
    first = enc.batch.tokens[0][enc.batch.attention_mask[0].bool()].tolist()
    assert enc.chat is True and first[0] != tiny_nnsight.tokenizer.bos_token_id  # the template opens the text
    assert tiny_nnsight.tokenizer.decode(first).startswith("<user>The ")
    monkeypatch.setattr(tiny_nnsight.tokenizer, "chat_template", None, raising=False)
    with pytest.raises(MechkitError, match="has no chat template"):
        encode_prompts(tiny_nnsight, prompts, chat=True)


def test_entities_that_are_not_single_tokens_are_refused_where_needed(tiny_nnsight):
    schema = schema_from_dict({**SMALL, "roles": {"object": ["apple", "key"], "box": ["A", "BC"]}})
    prompts = make_prompts(schema, 2, 1, seed=0)
    encode_prompts(tiny_nnsight, prompts)  # distinct first tokens: fine for task accuracy
    with pytest.raises(MechkitError) as err:
        encode_prompts(tiny_nnsight, prompts, single_token=True)
    assert_one_sentence(err, "'BC'", "2 tokens", "tiny:llama", "single-token")


def test_answers_sharing_their_first_token_are_refused(tiny_nnsight):
    shared = schema_from_dict({**SMALL, "roles": {"object": ["apple", "key"], "box": ["Aa", "Ab"]}})
    enc = encode_prompts(tiny_nnsight, make_prompts(shared, 2, 1, seed=0))  # " A" is shared by all: appended
    assert tiny_nnsight.tokenizer.decode(enc.batch.tokens[0, -5:]) == "Box A"
    schema = schema_from_dict({**SMALL, "roles": {"object": ["apple", "key", "coin"], "box": ["Aa", "Ab", "C"]}})
    with pytest.raises(MechkitError) as err:
        encode_prompts(tiny_nnsight, make_prompts(schema, 3, 1, seed=0))
    assert_one_sentence(err, "'Aa'", "'Ab'", "same token on tiny:llama")


# --- task accuracy -----------------------------------------------------------------------------------------------


def test_task_accuracy_runs_per_n_and_position_with_chance(tiny_tl):
    result = task_accuracy(tiny_tl, "boxes", [2, 3], 12, seed=0, verbose=False)
    assert (result.task, result.query, result.model, result.chat) == ("boxes", "box_of_object", "tiny:llama", False)
    records = result.records()
    assert [(r["n_groups"], r["query_position"]) for r in records] == [
        (2, "all"), (2, 0), (2, 1), (3, "all"), (3, 0), (3, 1), (3, 2)]
    assert [r["n_prompts"] for r in records] == [12, 6, 6, 12, 4, 4, 4]
    assert all(r["chance"] == 1 / r["n_groups"] for r in records)
    run = result.runs[3]
    assert run.candidate_logits.shape == (12, 3) and run.accuracy == float(run.correct.double().mean())
    assert records[3]["accuracy"] == pytest.approx(sum(run.by_position()) / 3)


def test_task_accuracy_is_deterministic_and_batched_equals_unbatched(tiny_tl, tiny_nnsight):
    batched = task_accuracy(tiny_tl, "code_dict", 3, 6, seed=5, query="var_of_name", batch_size=6, verbose=False)
    again = task_accuracy(tiny_tl, "code_dict", 3, 6, seed=5, query="var_of_name", batch_size=6, verbose=False)
    single = task_accuracy(tiny_tl, "code_dict", 3, 6, seed=5, query="var_of_name", batch_size=1, verbose=False)
    other = task_accuracy(tiny_nnsight, "code_dict", 3, 6, seed=5, query="var_of_name", batch_size=4, verbose=False)
    assert torch.equal(batched.runs[3].candidate_logits, again.runs[3].candidate_logits)
    for result in (single, other):
        assert torch.allclose(batched.runs[3].candidate_logits, result.runs[3].candidate_logits, atol=1e-4)
        assert torch.equal(batched.runs[3].predicted, result.runs[3].predicted)
    shifted = task_accuracy(tiny_tl, "code_dict", 3, 6, seed=6, query="var_of_name", verbose=False)
    assert not torch.equal(batched.runs[3].candidate_logits, shifted.runs[3].candidate_logits)


def test_task_accuracy_checks_input_before_running(tiny_tl):
    with pytest.raises(MechkitError, match="n_groups=40"):
        task_accuracy(tiny_tl, "boxes", [3, 40], 4, verbose=False)
    with pytest.raises(MechkitError, match="distinct"):
        task_accuracy(tiny_tl, "boxes", [3, 3], 4, verbose=False)


def test_schema_objects_can_be_built_in_python():
    schema = BindingSchema("mine", "", {"a": ("x", "y"), "b": ("p", "q")}, "{a}={b}",
                           (BindingQuery("q", "What is {a}?", "b"),), separator="; ")
    prompt = make_prompts(schema, 2, 1, seed=0)[0]
    assert prompt.context.count(";") == 1 and get_task(schema) is schema


@pytest.mark.real
def test_qwen_binds_three_boxes(qwen_nnsight):
    result = task_accuracy(qwen_nnsight, "boxes", 3, 12, seed=0, verbose=False)
    assert result.chat is True and result.runs[3].accuracy >= 0.9


@pytest.mark.real
@pytest.mark.parametrize("fixture", ["gemma_tl", "smollm_tl", "qwen_nnsight"])
def test_builtin_answers_are_single_tokens_on_the_packaged_models(fixture, request):
    subject = request.getfixturevalue(fixture)
    for schema in builtin_tasks().values():
        for query in schema.queries:
            prompts = make_prompts(schema, schema.max_groups(), 10, seed=1, query=query.name)
            encode_prompts(subject, prompts, single_token=True)
