"""Provenance of Hub datasets: the revision recorded is a commit sha, never a version string."""

from __future__ import annotations

import json

SHA = "b08601e04326c79dfdd32d625aee71d232d685c3"


def test_commit_sha_is_read_from_the_hub_file_urls_datasets_builds():
    import datasets

    from evals.data import commit_sha_in

    # The URL template datasets resolves Hub data files with (hf://datasets/<repo>@<sha>/<path>).
    url = datasets.config.HUB_DATASETS_HFFS_URL.format(
        repo_id="Salesforce/wikitext", revision=SHA, path="wikitext-2-raw-v1/test-00000-of-00001.parquet"
    )
    assert commit_sha_in([url]) == SHA
    # and from the cache folder datasets keeps a Hub dataset in (<name>/<config>/<version>/<sha>/)
    assert commit_sha_in([f"cache/Salesforce___wikitext/wikitext-2-raw-v1/0.0.0/{SHA}/wikitext-test.arrow"]) == SHA


def test_a_packaged_builders_config_hash_is_not_taken_for_a_commit(tmp_path):
    """A dataset datasets built from local JSON has a 64-hex hash in its cache path: no commit."""
    import datasets

    from evals.data import hub_commit_sha

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(3)))
    ds = datasets.load_dataset("json", data_files={"test": str(rows)}, split="test",
                               cache_dir=str(tmp_path / "cache"))
    assert ds.cache_files  # real cache files, under a config hash folder
    assert hub_commit_sha(ds, "local/rows") is None  # offline in tests: no Hub question either
