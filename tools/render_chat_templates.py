#!/usr/bin/env python3
"""Renders the chat templates under tests/Engine.Tests/Tokenization/ChatTemplates with Jinja2 the way
transformers' apply_chat_template does (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks,
loopcontrols, raise_exception) on the conversations of ChatTemplateTests, and prints the expected
strings as C# (the tests hold them written out; this script is how they were made)."""
import json, os, sys
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "Engine.Tests", "Tokenization", "ChatTemplates")

def raise_exception(message):
    raise TemplateError(message)

env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
env.globals["raise_exception"] = raise_exception

CONVERSATIONS = {
    "multi": [("user", "Hello!"), ("assistant", "  Hi there.  "), ("user", "What is 2+2?\n"), ("assistant", "4"), ("user", "Thanks")],
    "system": [("system", " Be brief. "), ("user", "Hello!"), ("assistant", "Hi."), ("user", "Bye")],
    "stop": [("system", "sys"), ("user", "a"), ("tool", "t"), ("assistant", "please stop here"), ("user", "never")],
}

def cs(s):
    return json.dumps(s, ensure_ascii=False).replace("\\u", "\\u")

def main():
    out = []
    for name in ["llama3", "mistral", "qwen2", "gemma", "features"]:
        path = os.path.join(HERE, name + (".jinja" if name == "features" else ".json"))
        if name == "features":
            tpl, bos, eos = open(path).read(), "<s>", "</s>"
        else:
            cfg = json.load(open(path))
            tpl, bos, eos = cfg["chat_template"], cfg["bos_token"], cfg["eos_token"]
        t = env.from_string(tpl)
        for conv, msgs in CONVERSATIONS.items():
            for gen in (False, True):
                kw = dict(messages=[{"role": r, "content": c} for r, c in msgs], add_generation_prompt=gen, tools=None, documents=None)
                if bos is not None: kw["bos_token"] = bos
                if eos is not None: kw["eos_token"] = eos
                try:
                    r = cs(t.render(**kw))
                except TemplateError as e:
                    r = "ERROR:" + cs(str(e))
                out.append(f'        ["{name}", "{conv}", {str(gen).lower()}, {r}],')
    print("\n".join(out))

main()
