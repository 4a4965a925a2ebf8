"""Mount options on their own: sizes, factors, view names, ``-o`` lists, MountConfig."""

from __future__ import annotations

import pytest

from tifffs.config import (
    DEFAULT_CACHE_BYTES,
    ConfigError,
    MountConfig,
    parse_factors,
    parse_libfuse,
    parse_method,
    parse_render_threads,
    parse_size,
    parse_views,
    split_mount_options,
)


@pytest.mark.parametrize("text, expected", [
    ("1048576", 1 << 20), ("512M", 512 << 20), ("2G", 2 << 30), ("1g", 1 << 30),
    ("64K", 64 << 10), ("1T", 1 << 40), ("1.5G", 3 << 29), ("256MB", 256 << 20),
    ("256MiB", 256 << 20), (" 8M ", 8 << 20), ("0", 0),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "", "M", "-1M", "1P", "1.2.3G", "1 0M"])
def test_parse_size_rejects_with_an_example(text):
    with pytest.raises(ConfigError, match="invalid size.*e.g. 512M"):
        parse_size(text)


@pytest.mark.parametrize("text, expected", [
    ("2,4,8", (2, 4, 8)), ("2:4:8", (2, 4, 8)), ("x4, X2", (4, 2)), ("4,4,2", (4, 2)),
    ("1", (1,)), ("1024", (1024,)),
])
def test_parse_factors(text, expected):
    assert parse_factors(text) == expected


@pytest.mark.parametrize("text", ["0", "1025", "two", "2.5", "-2", "x"])
def test_parse_factors_rejects_with_the_range(text):
    with pytest.raises(ConfigError, match=f"invalid factor '{text}': use .*from 1 to 1024"):
        parse_factors(text)


def test_parse_factors_quotes_the_item_as_given():
    with pytest.raises(ConfigError, match="invalid factor 'x' in '2,x'"):
        parse_factors("2,x")
    with pytest.raises(ConfigError, match="invalid factor 'x0' in 'x2:x0'"):
        parse_factors("x2:x0")


@pytest.mark.parametrize("parse, what", [(parse_factors, "factor"),
                                         (lambda text: parse_views(text, "mean"), "view")])
@pytest.mark.parametrize("text", ["4,,8", "4,8,", ":4:8", "4, ,8"])
def test_lists_refuse_an_empty_item(parse, what, text):
    text = text.replace("4", "x4").replace("8", "x8") if what == "view" else text
    with pytest.raises(ConfigError, match=f"empty {what} in .*use e.g."):
        parse(text)


@pytest.mark.parametrize("text", ["", " ", ",", " : "])
def test_lists_refuse_an_empty_value(text):
    with pytest.raises(ConfigError, match="no factors given: use e.g. --factors 2,4,8"):
        parse_factors(text)
    with pytest.raises(ConfigError, match="no views given: use e.g. --views x4"):
        parse_views(text, "mean")


def test_parse_views_checks_every_name():
    assert parse_views("x4, x4-max:x4z2,fit1000", "mean") == ("x4", "x4-max", "x4z2",
                                                             "fit1000")
    with pytest.raises(ConfigError, match="x4-blur"):
        parse_views("x4,x4-blur", "mean")


def test_parse_method():
    assert parse_method("lanczos") == "lanczos"
    with pytest.raises(ConfigError, match="invalid method 'cubic': choose one of mean"):
        parse_method("cubic")


def test_parse_libfuse():
    assert parse_libfuse("2") == 2 and parse_libfuse("3") == 3
    with pytest.raises(ConfigError, match="invalid libfuse '4': choose 2"):
        parse_libfuse("4")
    assert split_mount_options(["libfuse=3,allow_other"]) == ({"libfuse": "3"},
                                                              {"allow_other": True})


def test_split_mount_options_separates_ours_libfuse_and_ignored():
    ours, fuse = split_mount_options([
        "rw,noauto,nofail,_netdev,allow_other,factors=2:4,cache-size=1G",
        "uid=1000, debug,log_file=/var/log/t.log,use_levels,views=x4z2:fit100,,method=max"])
    assert ours == {"factors": "2:4", "cache_size": "1G", "debug": "1",
                    "log_file": "/var/log/t.log", "use_levels": "1", "views": "x4z2:fit100",
                    "method": "max"}
    assert fuse == {"allow_other": True, "uid": "1000"}


@pytest.mark.parametrize("options, message", [
    (["factors=2,4"], r"-o factors=2,4: inside -o, separate factors with ':' \(factors=2:4\)"),
    (["allow_other,factors=x2,x4,8,ro"], r"-o factors=x2,x4,8: .* \(factors=x2:x4:8\)"),
    (["views=x4,fit100,allow_other"], r"-o views=x4,fit100: .* \(views=x4:fit100\)"),
])
def test_split_mount_options_refuses_a_list_with_commas(options, message):
    with pytest.raises(ConfigError, match=message):
        split_mount_options(options)


def test_split_mount_options_passes_on_what_follows_a_list():
    assert split_mount_options(["factors=2:4,allow_other,uid=0"]) == (
        {"factors": "2:4"}, {"allow_other": True, "uid": "0"})


def test_mount_config_views():
    plain = MountConfig(source="/s", mountpoint="/m")
    assert [v.name for v in plain.views] == ["x2", "x4", "x8"]
    assert plain.cache_bytes == DEFAULT_CACHE_BYTES
    named = MountConfig(source="/s", mountpoint="/m", view_names=("x4-max", "fit50"))
    assert [v.name for v in named.views] == ["x4-max", "fit50"]
    both = MountConfig(source="/s", mountpoint="/m", factors=(4,), view_names=("x4", "x2z2"),
                       use_levels=True)
    assert [v.name for v in both.views] == ["x4", "x2z2"]
    assert all(v.use_levels for v in both.views)


def test_parse_render_threads():
    assert parse_render_threads("1") == 1 and parse_render_threads(" 16 ") == 16
    for text in ("0", "-2", "two", ""):
        with pytest.raises(ConfigError, match="render threads .*from 1 up"):
            parse_render_threads(text)
    assert split_mount_options(["render_threads=4,ro"]) == ({"render_threads": "4"}, {})
