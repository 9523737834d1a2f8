"""scripts/make-docs: tap-forward(1) and the shell completions match the parser they come from."""

import argparse
import os
import re
import shutil
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader

import pytest

from greentap.cli import build_parser
from tests.conftest import must_run

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
SCRIPT = os.path.join(ROOT, "scripts", "make-docs")


def load_make_docs():
    """scripts/make-docs as a module (scripts/ is not a package, the file has no .py)."""
    loader = SourceFileLoader("make_docs", SCRIPT)
    module = module_from_spec(spec_from_loader("make_docs", loader))
    loader.exec_module(module)
    return module


make_docs = load_make_docs()
MAN_PAGE = os.path.join(ROOT, make_docs.MAN_PAGE)
COMPLETIONS = {shell: os.path.join(ROOT, path) for shell, path in make_docs.COMPLETIONS.items()}
OPTIONS = [option for action in build_parser()._actions for option in action.option_strings]


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def pinned_shtab():
    """shtab at the pinned version, else skip: another version writes other bytes."""
    shtab = pytest.importorskip("shtab")
    if shtab.__version__ != make_docs.SHTAB_VERSION:
        pytest.skip(f"shtab {shtab.__version__} installed, not {make_docs.SHTAB_VERSION}")
    return shtab


def tool(cmd, **kw):
    """Run a system tool; under the sanitize environment, without the sanitizer runtimes
    preloaded for Python (they would check groff's own C++ and fail it)."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env, **kw)


def lint_roff(path):
    """groff's warnings about the page, else mandoc's; skip (CI: fail) without either."""
    if shutil.which("groff"):
        cmd = ["groff", "-man", "-Tutf8", "-ww", "-z", path]
        return tool(cmd).stderr
    if shutil.which("mandoc"):
        cmd = ["mandoc", "-T", "lint", "-W", "warning", path]
        out = tool(cmd)
        # The date is left out on purpose: the page must not change with the day.
        return "\n".join(
            line for line in (out.stdout + out.stderr).splitlines() if "missing date" not in line
        )
    if must_run():
        pytest.fail("neither groff nor mandoc: apt-get install groff-base")
    pytest.skip("neither groff nor mandoc installed (Debian: groff-base)")


def render_text(path):
    """The page as plain text, one paragraph a line (wide), through groff or mandoc."""
    if shutil.which("groff"):
        cmd = ["groff", "-man", "-Tutf8", "-rLL=250n", "-P-cbou", path]
        return tool(cmd, check=True).stdout
    if shutil.which("mandoc"):
        cmd = ["mandoc", "-T", "utf8", "-O", "width=250", path]
        out = tool(cmd, check=True).stdout
        return re.sub(".\x08", "", out)  # overstrike bold and underline
    lint_roff(path)  # skips or fails as the lint does
    return ""


def complete(*words, cwd=None):
    """What the bash completion offers for the last of ``words`` (after tap-forward)."""
    script = read(COMPLETIONS["bash"])
    function = re.search(r"^complete .*-F (\S+) tap-forward$", script, re.MULTILINE).group(1)
    shell = (
        'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); '
        f'{function}; printf "%s\\n" "${{COMPREPLY[@]}}"'
    )
    cmd = ["bash", "--norc", "--noprofile", "-c", shell, "bash", COMPLETIONS["bash"], "tap-forward"]
    out = tool([*cmd, *words], check=True, cwd=cwd)
    return out.stdout.split()


class _Custom(argparse.Action):
    """An action of its own taking no argument, without help (as cli's _Version)."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0)

    def __call__(self, *args):
        pass


def awkward_parser():
    """A parser with everything the generator must handle and roff must not misread."""
    p = argparse.ArgumentParser(
        prog="toy",
        description="Toy \\ back\\slash: 'quotes and a naïve café",
        epilog="notes:\n  A   .starts with a dot\n  B   'starts with a quote\n"
        "\nexamples:\n  toy --pair k v a.txt   a pair\n  toy -v -- -a  dashes\n"
        "      | grep \\\\\n  .dotted\n"
        "\nconfig (a note):\n  key = 1\n  other = 2      a comment\n",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="inputs")
    p.add_argument("--config", metavar="FILE", default="/etc/toy", help=".conf %(default)s")
    p.add_argument("-v", "--verbose", action="store_true", help="'quoted 100%% sure")
    p.add_argument("--mode", choices=("a", "b"), help="one of %(choices)s")
    p.add_argument("--pair", nargs=2, metavar=("K", "V"), help="a\\b")
    p.add_argument("--hidden", help=argparse.SUPPRESS)
    p.add_argument("--custom", action=_Custom)
    return p


def test_committed_man_page_is_generated():
    """share/man/man1/tap-forward.1 is exactly what scripts/make-docs renders from the parser."""
    generated = make_docs.generate(completions=False)[make_docs.MAN_PAGE].decode()
    assert read(MAN_PAGE) == generated, (
        "tap-forward.1 is out of date with greentap.cli.build_parser(): run scripts/make-docs"
    )


@pytest.mark.parametrize("option", OPTIONS)
def test_every_option_is_documented_and_completed(option):
    """Each option string is in the man page (hyphens as \\-) and offered by both completions."""
    assert option.replace("-", r"\-") in read(MAN_PAGE), "run scripts/make-docs"
    bash = re.search(r"_option_strings=\((.*)\)", read(COMPLETIONS["bash"])).group(1)
    assert option in bash.split(), "bash completion out of date: run scripts/make-docs"
    assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", read(COMPLETIONS["zsh"])), (
        "zsh completion out of date: run scripts/make-docs"
    )


def test_man_page_is_valid_roff():
    """groff -ww (or mandoc -T lint) finds nothing to warn about in tap-forward.1."""
    assert lint_roff(MAN_PAGE) == ""


def test_any_parser_renders_valid_literal_roff(tmp_path):
    """A parser's backslashes, leading dots and quotes, %% and non-ASCII reach the reader as
    written: no warning, no text taken for a request; hidden options stay hidden."""
    page = tmp_path / "toy.1"
    page.write_text(make_docs.render_man(awkward_parser(), "toy 1.0"), encoding="utf-8")
    assert lint_roff(str(page)) == ""
    text = render_text(str(page))
    for shown in [
        "Toy \\ back\\slash: 'quotes and a naïve café",
        ".conf /etc/toy",
        "'quoted 100% sure",
        "one of a, b",
        "a\\b",
        "--pair K V",
        "-v, --verbose",
        "--mode {a,b}",
        "--custom",
        ".starts with a dot",
        "'starts with a quote",
        "  toy -v -- -a  dashes\n           | grep \\\\\n       .dotted\n",  # kept as is
        "FILE [FILE ...]",
    ]:
        assert shown in text
    assert "--hidden" not in text
    for heading in ["NOTES", "EXAMPLES", "CONFIG"]:
        assert re.search(rf"^{heading}$", text, re.MULTILINE)
    assert "a note\n\n       key = 1\n       other = 2      a comment\n" in text


@pytest.mark.parametrize(
    ("words", "offered"),
    [
        (("--log-f",), ["--log-format"]),
        (("--log-format", ""), ["console", "json"]),
        (("--stats", "5", "--offload", ""), ["auto", "on", "off"]),
        (("tap0", "--log-level", "w"), ["warning"]),
    ],
)
def test_bash_completes_options_and_choices(words, offered):
    """Sourced into bash, the completion function offers option names and their choices."""
    assert complete(*words) == offered


def test_zsh_completion_parses():
    """zsh reads _tap-forward without a syntax error (skipped where zsh is not installed)."""
    if not shutil.which("zsh"):
        pytest.skip("zsh not installed")
    result = tool(["zsh", "-n", COMPLETIONS["zsh"]])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("shell", sorted(COMPLETIONS))
def test_committed_completions_are_generated(shell):
    """With the pinned shtab, each committed completion is byte for byte what make-docs writes."""
    pinned_shtab()
    with open(COMPLETIONS[shell], "rb") as f:
        committed = f.read()
    assert committed == make_docs.generate()[make_docs.COMPLETIONS[shell]], (
        f"{shell} completion out of date with greentap.cli.build_parser(): run scripts/make-docs"
    )


def test_file_options_complete_file_names():
    """An option whose metavar is FILE completes file names (bash and zsh); one with choices,
    its choices."""
    pinned_shtab()
    bash = make_docs.render_completion(awkward_parser(), "bash")
    assert "_shtab_toy___config_COMPGEN=_shtab_compgen_files" in bash
    assert "_shtab_toy___mode_choices=(a b)" in bash
    assert ":FILE:_files" in make_docs.render_completion(awkward_parser(), "zsh")


@pytest.mark.parametrize(
    "action",
    [a for a in build_parser()._actions if a.metavar in make_docs.FILE_METAVARS],
    ids=lambda action: action.option_strings[0],
)
def test_committed_completions_complete_files_for_file_options(action, tmp_path):
    """tap-forward's options taking a FILE or PATH (--config, --control) complete file names."""
    (tmp_path / "example.toml").touch()
    (tmp_path / "other").touch()
    assert complete(action.option_strings[0], "ex", cwd=tmp_path) == ["example.toml"]
    bash, zsh = read(COMPLETIONS["bash"]), read(COMPLETIONS["zsh"])
    for option in action.option_strings:
        variable = "_shtab_tap_forward_" + re.sub(r"\W", "_", option)
        assert f"{variable}_COMPGEN=_shtab_compgen_files" in bash, "run scripts/make-docs"
        assert re.search(rf'"{re.escape(option)}\[.*\]:{action.metavar}:_files"', zsh), (
            "run scripts/make-docs"
        )


def test_check_names_each_stale_file(tmp_path):
    """make-docs --check: 0 when all match; 1 and one line naming each differing or missing
    file; without --check it writes them, and they match again."""
    pinned_shtab()
    os.mkdir(tmp_path / "scripts")
    shutil.copy(SCRIPT, tmp_path / "scripts")
    shutil.copytree(os.path.join(ROOT, "share"), tmp_path / "share")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}

    def make_docs_run(*args):
        cmd = [sys.executable, str(tmp_path / "scripts" / "make-docs"), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)

    assert make_docs_run("--check").returncode == 0
    with open(tmp_path / make_docs.MAN_PAGE, "a") as f:
        f.write('.\\" edited by hand\n')
    os.remove(tmp_path / make_docs.COMPLETIONS["zsh"])
    result = make_docs_run("--check")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert str(make_docs.MAN_PAGE) in result.stderr
    assert str(make_docs.COMPLETIONS["zsh"]) in result.stderr
    assert str(make_docs.COMPLETIONS["bash"]) not in result.stderr
    assert "run scripts/make-docs" in result.stderr
    assert make_docs_run().returncode == 0
    assert make_docs_run("--check").returncode == 0
    assert os.access(SCRIPT, os.X_OK)
