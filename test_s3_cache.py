"""Credential and permission self-test for the cache: run it before ``python main.py``.

    python test_s3_cache.py

Shows where the configuration and credentials come from (keys masked), checks path handling
and a local round trip, and on S3 lists, writes, inspects, reads and deletes a probe object
under CACHE_DIR (or the bucket in S3_BUCKET_NAME). Each step prints ✅, ⚠️ or ❌ with the fix.
Exit status 0 when every configured store works, 1 otherwise.
"""

from __future__ import annotations

import sys

from jangdok.doctor import Finding, run_checks

MARKS = {"ok": "✅ ", "note": "⚠️ ", "fail": "❌ ", "info": "   "}


def show(finding: Finding) -> None:
    print(f"{MARKS[finding.status]}{finding.message}")
    if finding.error:
        print(f"   {finding.error}")
    if finding.fix:
        print(f"   → fix: {finding.fix}")


def main() -> int:
    print("jangdok cache self-test (캐시 자격증명 테스트)")
    failures = 0
    for finding in run_checks():
        show(finding)
        failures += finding.status == "fail"
    if failures:
        print(f"\n❌ {failures} check(s) failed")
        return 1
    print("\n✅ every configured cache store works")
    return 0


if __name__ == "__main__":
    sys.exit(main())
