"""Batches: -f lists, Compose files, --fail-fast, --json, --list-platforms and one archive for several images."""

import json
import tarfile

import pytest

from cli import run_puller
from fakeregistry import FakeRegistry
from test_fake_registry import random_layer


@pytest.fixture
def registry():
    with FakeRegistry() as fake:
        fake.add_image("team/one", "v1", [random_layer(51, 20_000), random_layer(50, 30_000)])
        fake.add_image("team/two", "v1", [random_layer(52, 20_000), random_layer(50, 30_000)])
        amd64 = fake.add_image("team/multi", None, [random_layer(53, 5000)], media="oci")
        arm64 = fake.add_image("team/multi", None, [random_layer(54, 5000)], platform=("linux", "arm64", "v8"), media="oci")
        fake.add_index("team/multi", "v1", [(("linux", "amd64", None), amd64["manifest_digest"]), (("linux", "arm64", "v8"), arm64["manifest_digest"])], attestations=True)
        yield fake
    assert fake.errors == [], "\n".join(fake.errors)


def test_reference_list_file(registry, tmp_path):
    listing = tmp_path / "images.txt"
    listing.write_text("# images for the offline site\n\n%s/team/one:v1\n  %s/team/two:v1   # second\n" % (registry.host, registry.host))
    result = run_puller(["-f", str(listing), "-d", str(tmp_path / "work")])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(tmp_path / "work" / "team_one_v1.tar"), str(tmp_path / "work" / "team_two_v1.tar")]
    assert "STATUS" in result.stderr
    assert result.stderr.count("pulled") == 2


def test_reference_list_from_stdin(registry, tmp_path):
    result = run_puller(["-f", "-", "-d", str(tmp_path), "-q"], stdin="%s/team/one:v1\n" % registry.host)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "team_one_v1.tar").is_file()


def test_compose_file_images(registry, tmp_path):
    compose = tmp_path / "compose.yaml"
    compose.write_text(
        "services:\n"
        "  web:\n    image: %s/team/one:v1\n    ports: ['80:80']\n"
        "  worker:\n    image: %s/team/two:v1\n"
        "  built:\n    build: .\n" % (registry.host, registry.host)
    )
    result = run_puller(["--compose", str(compose), "-d", str(tmp_path / "work"), "-q"])
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "work").glob("*.tar")) == ["team_one_v1.tar", "team_two_v1.tar"]


def test_compose_without_images_rejected(tmp_path):
    compose = tmp_path / "compose.yaml"
    compose.write_text("services:\n  built:\n    build: .\n")
    result = run_puller(["--compose", str(compose), "-d", str(tmp_path / "work")])
    assert result.returncode == 2
    assert "image:" in result.stderr


def test_fail_fast_skips_the_rest(registry, tmp_path):
    result = run_puller(["%s/team/missing:v1" % registry.host, "%s/team/one:v1" % registry.host, "--fail-fast", "-d", str(tmp_path)])
    assert result.returncode == 1
    assert not (tmp_path / "team_one_v1.tar").exists()
    assert "skipped" in result.stderr


def test_json_results(registry, tmp_path):
    result = run_puller(["%s/team/one:v1" % registry.host, "%s/team/missing:v1" % registry.host, "--json", "-d", str(tmp_path)])
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["status"] for r in records] == ["pulled", "failed"]
    assert records[0]["reference"] == "%s/team/one:v1" % registry.host
    assert records[0]["digest"].startswith("sha256:")
    assert records[0]["platform"] == "linux/amd64"
    assert records[0]["archive"] == str(tmp_path / "team_one_v1.tar")
    assert records[0]["size"] > 50_000
    assert "MANIFEST_UNKNOWN" in records[1]["error"]


def test_list_platforms_downloads_no_layer(registry, tmp_path):
    registry.clear_requests()
    result = run_puller(["%s/team/multi:v1" % registry.host, "%s/team/one:v1" % registry.host, "--list-platforms", "-d", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert [(ref.split("/", 1)[1], platform) for ref, platform, _ in lines] == [
        ("team/multi:v1", "linux/amd64"), ("team/multi:v1", "linux/arm64/v8"), ("team/one:v1", "linux/amd64")]
    layer_requests = [r for r in registry.requests_to("/blobs/") if "team/one" in r.path]
    assert len(layer_requests) == 1, "only the config of the single-platform image may be fetched"
    assert not list(tmp_path.glob("*.tar"))


def test_several_images_into_one_archive(registry, tmp_path):
    output = tmp_path / "bundle.tar"
    references = ["%s/team/one:v1" % registry.host, "%s/team/two:v1" % registry.host, "%s/team/multi:v1" % registry.host]
    result = run_puller(references + ["-o", str(output), "-d", str(tmp_path / "work")])
    assert result.returncode == 0, result.stderr
    with tarfile.open(output) as tar:
        legacy = json.loads(tar.extractfile("manifest.json").read())
        index = json.loads(tar.extractfile("index.json").read())
        names = [m.name for m in tar.getmembers()]
    assert [entry["RepoTags"] for entry in legacy] == [[r] for r in references]
    assert [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]] == references
    assert len(names) == len(set(names)), "a shared layer was stored twice"
    for entry in legacy:
        for member in [entry["Config"]] + entry["Layers"]:
            assert member in names
    assert result.stdout.split() == [str(output)]


def test_one_archive_not_written_when_an_image_fails(registry, tmp_path):
    output = tmp_path / "bundle.tar"
    result = run_puller(["%s/team/one:v1" % registry.host, "%s/team/missing:v1" % registry.host, "-o", str(output), "-d", str(tmp_path / "work")])
    assert result.returncode == 1
    assert not output.exists()
    assert "was not written" in result.stderr


def test_blob_shared_across_repositories_fetched_once(registry, tmp_path):
    one = "%s/team/one:v1" % registry.host
    two = "%s/team/two:v1" % registry.host
    result = run_puller([one, two, "-d", str(tmp_path), "-q"])
    assert result.returncode == 0, result.stderr
    shared = [r for r in registry.requests_to("/blobs/") if r.method == "GET"]
    digests = [r.path.rsplit("/", 1)[1] for r in shared]
    assert len(digests) == len(set(digests)), "the layer both images share was downloaded twice"
    assert "reused from" in (tmp_path / "docker_puller.log").read_text()
    assert (tmp_path / "team_two_v1.tar").is_file()
