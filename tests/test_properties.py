"""Property tests: the parsers return a value or raise the tool's own error, never anything else."""

from hypothesis import given, settings
from hypothesis import strategies as st

import docker_image_puller as dip

REFERENCE_ALPHABET = st.sampled_from(list("abcXYZ019:/@._-") + ["sha256:", "a" * 64, "localhost", "docker.io"])


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=80), st.lists(REFERENCE_ALPHABET, max_size=12).map("".join)))
def test_reference_parser_total(text):
    try:
        reference = dip.parse_reference(text)
    except dip.PullerError:
        return
    assert reference.repository and "/" not in reference.file_stem()
    assert ":" not in reference.file_stem()
    assert dip.parse_reference(str(reference)) == reference


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=120), st.lists(st.sampled_from(['Bearer ', 'Basic ', 'realm=', '"', '\\', ',', ' ', 'service', '=', 'x', '==']), max_size=20).map("".join)))
def test_challenge_parser_total(header):
    for challenge in dip.parse_challenges(header):
        assert challenge.scheme == challenge.scheme.lower()
        assert all(name == name.lower() for name in challenge.params)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.builds("bytes {}-{}/{}".format, st.integers(-5, 10**12), st.integers(-5, 10**12), st.integers(0, 10**12))))
def test_content_range_parser_total(value):
    parsed = dip.parse_content_range(value)
    if parsed is not None:
        start, end, total = parsed
        assert 0 <= start <= end
        assert total is None or end < total


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.lists(st.sampled_from(["linux", "arm64", "v8", "/", "AMD64", "x86_64", "", " "]), max_size=5).map("".join)))
def test_platform_parser_total(text):
    try:
        platform = dip.parse_platform(text)
    except dip.UsageError:
        return
    assert platform.os and platform.architecture
    assert dip.parse_platform(str(platform)) == platform


@settings(max_examples=200, deadline=None)
@given(st.lists(st.fixed_dictionaries({"digest": st.just("sha256:" + "a" * 64), "size": st.just(1), "platform": st.one_of(
    st.none(), st.text(max_size=5), st.fixed_dictionaries({"os": st.sampled_from(["linux", "windows", "unknown", 5]), "architecture": st.sampled_from(["amd64", "arm", "arm64", "unknown", None])},
                                                          optional={"variant": st.sampled_from(["v6", "v7", "v8", "", 3])}))}), max_size=6))
def test_platform_choice_total(entries):
    try:
        chosen = dip.choose_manifest(entries, dip.parse_platform("linux/arm64"))
    except dip.PlatformNotFoundError:
        return
    assert chosen in entries
