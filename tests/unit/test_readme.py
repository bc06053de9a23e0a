"""The README's client examples name the models that `make serve` serves, so that they work
as written against it (a checkpoint is served under its folder's name: `served_name`)."""

import re

from af3_model_executor.constants import THINK_MODEL_SUFFIX, served_name
from tests.support.paths import ROOT

README = (ROOT / "README.md").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()

# A model named in a request: curl's JSON body, the openai client's keyword argument.
MODEL_IN_REQUEST = re.compile(r"""["']model["']\s*:\s*["']([^"']+)["']|\bmodel=["']([^"']+)["']""")


def make_variable(name: str) -> str:
    return re.search(rf"^{name} \?= (\S+)$", MAKEFILE, re.M)[1]


def make_recipe(target: str) -> str:
    """A target's recipe, its continuation lines joined."""
    recipe = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n)+)", MAKEFILE, re.M)[1]
    return re.sub(r"\\\n\s*", " ", recipe)


def code_blocks(markdown: str) -> list[str]:
    return re.findall(r"^ *```[a-z]*\n(.*?)^ *```$", markdown, re.M | re.S)


def section(title: str) -> str:
    return re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)[1]


def client_model_names(block: str) -> list[str]:
    """Models a code block asks a server for: in requests, and `--model` of a command that
    talks to a server (`--url`); `af3-serve --model` and in-process `af3-infer` name
    checkpoints instead."""
    names = [a or b for a, b in MODEL_IN_REQUEST.findall(block)]
    for command in re.sub(r"\\\n\s*", " ", block).splitlines():
        if "--url" in command:
            names += re.findall(r"--model[ =](\S+)", command)
    return names


def served_by_make_serve() -> set[str]:
    """The names `make serve` serves: its checkpoint folder's, and the thinking model's
    when the checkpoint is built with its think/ adapter."""
    tiny = make_variable("TINY")
    serve = make_recipe("serve")
    assert re.search(r"--model \$\(TINY\)(\s|$)", serve), serve
    assert "--served-model-name" not in serve
    base = served_name(str(ROOT / tiny))
    think = "--think" in make_recipe("$(TINY)/config.json")
    return {base, base + THINK_MODEL_SUFFIX} if think else {base}


def test_make_serve_serves_the_real_checkpoints_names() -> None:
    assert served_by_make_serve() == {"audio-flamingo-3", "audio-flamingo-3-think"}


def test_using_it_examples_name_what_make_serve_serves() -> None:
    names = [n for block in code_blocks(section("Using it")) for n in client_model_names(block)]
    assert names, "no model named in the README's 'Using it' examples"
    assert set(names) <= served_by_make_serve()


def test_every_client_example_names_what_make_serve_serves() -> None:
    names = [n for block in code_blocks(README) for n in client_model_names(block)]
    assert "audio-flamingo-3-think" in names
    assert set(names) <= served_by_make_serve()


def test_client_model_names_extraction() -> None:
    block = (
        '{"model": "a", "max_tokens": 1}\n'
        'client.chat.completions.create(model="b", messages=[])\n'
        "af3-infer --url http://x:8000 \\\n  --model c --text hi\n"
        "af3-serve --model nvidia/d-hf\n"
        "af3-infer --model nvidia/e-hf --text hi\n"
    )
    assert client_model_names(block) == ["a", "b", "c"]
