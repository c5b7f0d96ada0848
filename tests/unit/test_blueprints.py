"""Blueprints: front matter, `<PARAM>` and `\\<PARAM>`, Jinja2, strict rendering, param checks."""

from __future__ import annotations

import pytest

from orch.config.blueprints import (
    PROVIDED,
    check_params,
    convert_placeholders,
    fill_placeholders,
    list_blueprint_files,
    load_blueprint,
    parse_blueprint,
    render_blueprint,
)
from orch.errors import BlueprintError, ConfigError

LABEL = "agents/x.md"
CONTEXT = "stage s, partition p"


def render(text: str, values: dict[str, object]) -> str:
    return render_blueprint(parse_blueprint(text, LABEL), values, CONTEXT)


def parse_error(text: str) -> BlueprintError:
    with pytest.raises(BlueprintError) as info:
        parse_blueprint(text, LABEL)
    return info.value


def render_error(text: str, values: dict[str, object]) -> BlueprintError:
    with pytest.raises(BlueprintError) as info:
        render(text, values)
    return info.value


# -- parsing -------------------------------------------------------------------------------


def test_front_matter_gives_description_params_and_body_line():
    blueprint = parse_blueprint(
        "---\ndescription: ' Deep research '\nparams:\n  B: second\n  A: first\n  C:\n---\n# <A>\n<B> <C>\n",
        LABEL,
    )
    assert blueprint.description == "Deep research"
    assert list(blueprint.params.items()) == [("B", "second"), ("A", "first"), ("C", "")]
    assert (blueprint.body, blueprint.body_line) == ("# <A>\n<B> <C>\n", 8)
    assert blueprint.used == frozenset({"A", "B", "C"})
    assert blueprint.path == LABEL


def test_blueprint_without_front_matter_is_all_body():
    blueprint = parse_blueprint("# <A>\n", LABEL)
    assert (blueprint.description, dict(blueprint.params), blueprint.body_line) == ("", {}, 1)


def test_empty_front_matter_and_crlf_line_endings():
    assert parse_blueprint("---\n---\nbody <A>\n", LABEL).body_line == 3
    crlf = parse_blueprint("---\r\nparams:\r\n  A: a\r\n---\r\nx <A>\r\n", LABEL)
    assert (dict(crlf.params), crlf.body_line) == ({"A": "a"}, 5)
    assert render_blueprint(crlf, {"A": 1}) == "x 1\n"


def test_load_blueprint_reads_relative_to_root(tmp_path):
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "w.md").write_text("---\nparams: {A: a}\n---\nhi <A>\n", encoding="utf-8")
    blueprint = load_blueprint(tmp_path, "agents/w.md")
    assert (blueprint.path, render_blueprint(blueprint, {"A": "you"})) == ("agents/w.md", "hi you\n")
    with pytest.raises(ConfigError) as info:
        load_blueprint(tmp_path, "agents/none.md")
    assert info.value.message == "agents/none.md: file not found"


def test_list_blueprint_files_adds_stage_blueprints_sorted_and_unique(tmp_path):
    (tmp_path / "agents").mkdir()
    for name in ("b.md", "a.md", "notes.txt"):
        (tmp_path / "agents" / name).write_text("x")
    assert list_blueprint_files(tmp_path, ["agents/b.md", "other/c.md"]) == [
        "agents/a.md",
        "agents/b.md",
        "other/c.md",
    ]


# -- front matter errors, with the right line ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("---\ndescription: x\n# body\n", "agents/x.md:1: front matter opened with '---' is never closed"),
        (
            "---\ndescription: x\nparms:\n  A: a\n---\nbody\n",
            "agents/x.md:3: unknown front matter key 'parms'; did you mean 'params'?",
        ),
        ("---\n- a\n---\nbody\n", "agents/x.md:2: front matter must be a mapping with description, params"),
        (
            "---\nparams: [A]\n---\nbody\n",
            "agents/x.md:2: front matter: description must be text and params a mapping NAME: description",
        ),
        (
            "---\ndescription: [a]\n---\nbody\n",
            "agents/x.md:2: front matter: description must be text and params a mapping NAME: description",
        ),
        (
            "---\nparams:\n  A: a\n  lower: x\n---\nbody\n",
            "agents/x.md:4: param name 'lower' must match [A-Z][A-Z0-9_]*",
        ),
    ],
)
def test_front_matter_errors_name_the_line(text, message):
    assert parse_error(text).message == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "---\ndescription: x\ndescription: y\n---\nbody\n",
            "agents/x.md:3: invalid YAML: duplicate key 'description'",
        ),
        (
            "---\nparams:\n  A: a\n  B: [\n---\nbody\n",
            "agents/x.md:5: invalid YAML: did not find expected node content",
        ),
    ],
)
def test_front_matter_yaml_errors_name_the_file_line(text, message):
    with pytest.raises(ConfigError) as info:
        parse_blueprint(text, LABEL)
    assert (info.value.message, info.value.hint) == (message, "fix the syntax at that line")


def test_front_matter_yaml_error_is_a_blueprint_error():
    parse_error("---\ndescription: x\ndescription: y\n---\nbody\n")


def test_front_matter_typo_hint_lists_the_keys():
    error = parse_error("---\ndescripton: x\n---\nbody\n")
    assert (
        error.message == "agents/x.md:2: unknown front matter key 'descripton'; did you mean 'description'?"
    )
    assert error.hint == "front matter takes 'description' and 'params'"


@pytest.mark.parametrize(
    ("body", "line", "problem"),
    [
        (
            "line\n{% for x in A %}\nno end\n",
            7,
            "Unexpected end of template. Jinja was looking for the following tags: 'endfor' or 'else'. "
            "The innermost block that needs to be closed is 'for'.",
        ),
        ("line\nline\n{{ A ! }}\n", 7, "unexpected char '!' at 15"),
        ("{% if <A> %}x{% endif %}\n", 5, "expected token ':', got '}'"),
    ],
)
def test_jinja_syntax_errors_name_the_file_line(body, line, problem):
    error = parse_error("---\nparams:\n  A: a\n---\n" + body)
    assert error.message == f"agents/x.md:{line}: blueprint syntax error: {problem}"
    if "<A>" in body:
        assert error.hint == "inside {{ }} and {% %} write the bare name (NAME), not <NAME>"
    else:
        assert error.hint == "fix the Jinja2 tag at that line; write \\<NAME> for a literal <NAME>"


# -- placeholders ----------------------------------------------------------------------------


def test_convert_placeholders_keeps_lines_and_only_upper_names():
    text = "a <B>\n\\<C> <d> <_E> <F-G> <H1>\n"
    converted = convert_placeholders(text)
    assert converted == "a {{ B }}\n{{ '<C>' }} <d> <_E> <F-G> {{ H1 }}\n"
    assert converted.count("\n") == text.count("\n")


def test_render_substitutes_values_and_leaves_other_angle_brackets():
    out = render("# <A>\n<div> <a> <B2> <_A> <AB-C> a<b\n", {"A": "Title", "B2": 7})
    assert out == "# Title\n<div> <a> 7 <_A> <AB-C> a<b\n"


def test_escaped_placeholder_is_a_literal_even_without_a_value():
    assert render("Write \\<NAME> literally; value <A>\n", {"A": "v"}) == "Write <NAME> literally; value v\n"


def test_placeholder_and_jinja_expression_are_the_same_name():
    assert render("<A> {{ A }} {{ A | upper }}\n", {"A": "x"}) == "x x X\n"


def test_full_jinja_loops_and_conditionals():
    text = (
        "---\nparams:\n  QUESTIONS: guiding questions\n  ITEM: the item\n  DEEP: depth flag\n---\n"
        "# <ITEM>\n"
        "{% for q in QUESTIONS %}\n"
        "{{ loop.index }}. {{ q }}\n"
        "{% endfor %}\n"
        "{% if DEEP %}\nGo deep.\n{% else %}\nStay short.\n{% endif %}\n"
    )
    assert render(text, {"QUESTIONS": ["Who?", "Why?"], "ITEM": "x", "DEEP": True}) == (
        "# x\n1. Who?\n2. Why?\nGo deep.\n"
    )
    assert render(text, {"QUESTIONS": [], "ITEM": "x", "DEEP": False}) == "# x\nStay short.\n"
    assert check_params(parse_blueprint(text, LABEL)) == []


def test_loop_over_mappings_reads_fields():
    text = "{% for child in INPUTS %}\n- {{ child.id }}: {{ child.files | join(', ') }}\n{% endfor %}\n"
    inputs = [{"id": "1.1", "files": ["a.md", "b.json"]}, {"id": "1.2", "files": []}]
    assert render(text, {"INPUTS": inputs}) == "- 1.1: a.md, b.json\n- 1.2: \n"


def test_trailing_newline_is_kept():
    assert render("x", {}) == "x"
    assert render("x\n\n", {}) == "x\n\n"


# -- strict rendering -------------------------------------------------------------------------


def test_missing_value_names_file_line_nearest_name_and_partition():
    text = "---\nparams:\n  FUNCTION_NAME: n\n---\nline1\n\nName: <FUNCTON_NAME>\n"
    error = render_error(text, {"FUNCTION_NAME": "x", "INDUSTRY_ID": "ev"})
    assert error.message == (
        "agents/x.md:7: unknown placeholder <FUNCTON_NAME>; did you mean <FUNCTION_NAME>? "
        "(stage s, partition p)"
    )
    assert error.hint == (
        "give FUNCTON_NAME a value (a field of the partition rows, or vars in orch.yaml), "
        "or fix the name; write \\<NAME> for a literal"
    )


def test_missing_value_without_near_name_and_without_context():
    blueprint = parse_blueprint("a\nb <ZZZ>\n", LABEL)
    with pytest.raises(BlueprintError) as info:
        render_blueprint(blueprint, {"A": 1})
    assert info.value.message == "agents/x.md:2: unknown placeholder <ZZZ>"


def test_missing_value_inside_a_loop_and_a_condition_names_its_line():
    loop = "a\n{% for q in QS %}\n{{ q }} <OTHER>\n{% endfor %}\n"
    assert render_error(loop, {"QS": [1]}).message == (
        "agents/x.md:3: unknown placeholder <OTHER> (stage s, partition p)"
    )
    condition = "a\nb\n{% if FLAG %}\nx\n{% endif %}\n"
    assert render_error(condition, {"FLAGS": 1}).message == (
        "agents/x.md:3: unknown placeholder <FLAG>; did you mean <FLAGS>? (stage s, partition p)"
    )


def test_missing_value_on_first_body_line_after_front_matter():
    error = render_error("---\nparams:\n  A: a\n---\n<B>\n", {"A": 1})
    assert error.message == "agents/x.md:5: unknown placeholder <B> (stage s, partition p)"


def test_missing_attribute_names_the_line():
    error = render_error("a\n{% for q in QS %}\n{{ q.nme }}\n{% endfor %}\n", {"QS": [{"name": 1}]})
    assert error.message == "agents/x.md:3: 'dict object' has no attribute 'nme' (stage s, partition p)"


def test_other_render_errors_name_the_line():
    error = render_error("x\n{{ A + 'x' }}\n", {"A": 1})
    assert error.message == (
        "agents/x.md:2: cannot render: unsupported operand type(s) for +: 'int' and 'str' "
        "(stage s, partition p)"
    )
    assert error.hint == "fix the expression at that line"


# -- declared vs used params --------------------------------------------------------------------


def test_check_params_reports_unused_and_undeclared_with_lines():
    blueprint = parse_blueprint(
        "---\nparams:\n  A: a\n  UNUSED: u\n---\n"
        "<A>\n\n{{ INPUTS }} <B>\n{% for q in QS %}{{ q }}{% endfor %}\n",
        LABEL,
    )
    assert check_params(blueprint) == [
        "agents/x.md:4: param UNUSED is declared but never used",
        "agents/x.md:8: <B> is used but not declared in the front matter params",
        "agents/x.md:9: <QS> is used but not declared in the front matter params",
    ]


def test_check_params_ignores_loop_variables_set_names_and_provided_names():
    blueprint = parse_blueprint(
        "---\nparams:\n  XS: xs\n---\n{% set n = XS | length %}{% for x in XS %}{{ x }}{{ n }}{% endfor %}"
        "{% for c in INPUTS %}{{ c.id }}{% endfor %}\n",
        LABEL,
    )
    assert "INPUTS" in PROVIDED
    assert check_params(blueprint) == []


def test_check_params_without_declared_params_reports_nothing_undeclared():
    assert check_params(parse_blueprint("<A> <B>\n", LABEL)) == []


def test_check_params_flags_a_typo_both_ways():
    blueprint = parse_blueprint("---\nparams:\n  FUNCTION_NAME: n\n---\nName: <FUNCTON_NAME>\n", LABEL)
    assert check_params(blueprint) == [
        "agents/x.md:3: param FUNCTION_NAME is declared but never used",
        "agents/x.md:5: <FUNCTON_NAME> is used but not declared in the front matter params",
    ]


# -- output-template placeholders ----------------------------------------------------------------


def test_fill_placeholders_substitutes_and_keeps_literals():
    values = {"A": 1, "B": "b"}
    assert fill_placeholders("data/<A>/<B>", values, "w:") == "data/1/b"
    assert fill_placeholders("data/\\<A>/<a>", values, "w:") == "data/<A>/<a>"


def test_fill_placeholders_unknown_name_suggests_and_lists_known():
    with pytest.raises(ConfigError) as info:
        fill_placeholders("data/<C>", {"B": 1, "CC": 2}, "orch.yaml:9: stages.w.output:")
    assert info.value.message == "orch.yaml:9: stages.w.output: unknown placeholder <C>; did you mean <CC>?"
    assert info.value.hint == "known names: B, CC"


# -- sandbox and bounds (issue 10, item 6) -----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (
            "{{ cycler.__init__.__globals__.os.system('touch x') }}",
            "access to attribute '__init__' of 'type' object is unsafe.",
        ),
        ("{{ ''.__class__.__mro__ }}", "access to attribute '__class__' of 'str' object is unsafe."),
        ("{% set x = [] %}{{ x.append(1) }}", "access to attribute 'append' of 'list' object is unsafe."),
    ],
)
def test_blueprints_cannot_reach_python_internals(body, detail):
    error = render_error("line one\n" + body + "\n", {})
    assert error.message == f"agents/x.md:2: cannot render: {detail} ({CONTEXT})"
    assert error.hint.startswith("blueprints render sandboxed")


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (
            "{% for i in range(10**9) %}x{% endfor %}",
            "calling safe_range(): argument 1000000000 is larger than the blueprint bound of 1,000,000",
        ),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "loops ran more than the blueprint bound of 1,000,000 iterations",
        ),
        (
            "{{ 'x' * 10**9 }}",
            "the result of the operator * would be larger than the blueprint bound of "
            "16,777,216 characters or items",
        ),
        (
            "{% set ns = namespace(s='x') %}{% for i in range(80) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            "a joined (~) value is larger than the blueprint bound of 16,777,216 characters or items",
        ),
        (
            "{% set x %}{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}{% endset %}",
            "the rendered text is longer than the blueprint bound of 16,777,216 characters",
        ),
        (
            "{{ 'x' | center(10**9) }}",
            "filter 'center': argument 1000000000 is larger than the blueprint bound of 1,000,000",
        ),
        (
            "{{ '%1000000000s' % 1 }}",
            "the operator %: a format width or precision above 999,999 is not allowed",
        ),
        (
            "{{ '{:>1000000000}'.format(1) }}",
            "calling format(): a format width or precision above 999,999 is not allowed",
        ),
        (
            "{{ 2 ** 100000 }}",
            "the operator ** would give a number larger than the blueprint bound of 4096 bits",
        ),
    ],
)
def test_renders_are_bounded_in_size_and_loops(body, detail):
    error = render_error(body + "\n", {})
    assert error.message == f"agents/x.md:1: cannot render: {detail} ({CONTEXT})"
    assert "at most 16,777,216 characters" in error.hint and "1,000,000 loop iterations" in error.hint


def test_runaway_macro_recursion_is_a_blueprint_error():
    error = render_error("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}\n", {})
    assert error.message.startswith("agents/x.md:1: cannot render: maximum recursion depth exceeded")


def test_loop_length_and_filters_still_work_under_the_bounds():
    text = "{% for q in Q %}- {{ q | upper }} {{ loop.index }}/{{ loop.length }}\n{% endfor %}{{ 'a' ~ 'b' }}"
    assert render(text, {"Q": ["a", "b"]}) == "- A 1/2\n- B 2/2\nab"


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_include_and_import_reach_files_under_agents(tmp_path):
    write(tmp_path / "agents/partials/intro.md", "Intro for <NAME>.\n")
    write(tmp_path / "agents/macros.md", "{% macro bullet(x) %}- {{ x }}{% endmacro %}")
    write(
        tmp_path / "agents/x.md",
        "{% include 'partials/intro.md' %}{% import 'macros.md' as m %}{{ m.bullet(NAME) }}\n",
    )
    blueprint = load_blueprint(tmp_path, "agents/x.md")
    assert render_blueprint(blueprint, {"NAME": "n"}) == "Intro for n.\n- n\n"


@pytest.mark.parametrize("target", ["../orch.yaml", "/etc/passwd", "link/secret.md", "fifo.md"])
def test_include_outside_agents_is_a_blueprint_error(tmp_path, target):
    import os

    write(tmp_path / "orch.yaml", "secret\n")
    write(tmp_path / "outside/secret.md", "secret\n")
    (tmp_path / "agents/link").symlink_to(tmp_path / "outside", target_is_directory=True) if (
        tmp_path / "agents"
    ).mkdir() is None else None
    os.mkfifo(tmp_path / "agents/fifo.md")
    write(tmp_path / "agents/x.md", f"first\n{{% include '{target}' %}}\n")
    error = render_error_loaded(tmp_path)
    assert error.message.startswith(f"agents/x.md:2: cannot render: {target} (")
    assert error.hint == "include, import and extend only files under agents/, by their path there"


def render_error_loaded(root):
    with pytest.raises(BlueprintError) as info:
        render_blueprint(load_blueprint(root, "agents/x.md"), {})
    return info.value
