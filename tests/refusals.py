"""The shape every refusal through the CLI must have: exit code 2 and one stderr line naming the problem."""


def assert_one_line_refusal(result, *expected: str) -> None:
    """`result` is a typer CliRunner result; each of `expected` must appear in the one line."""
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
