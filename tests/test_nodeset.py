"""Node sets (radmin/nodeset.py): pure functions, a table of edge cases and properties.

ClusterShell's NodeSet is the reference the contract names: where ClusterShell is
installed (the test extras), the expansions are checked against it too.
"""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from radmin.hosts import HostBook, HostSpecError
from radmin.nodeset import (
    MAX_HOSTS,
    NodeSetError,
    expand,
    fold,
    has_ranges,
    natural_sorted,
    split_entries,
)

# -- expansion: the contract's examples and the edge cases --------------------------------


@pytest.mark.parametrize(
    ("entry", "names"),
    [
        ("web1", ["web1"]),
        ("web[1-3]", ["web1", "web2", "web3"]),
        ("web[09-11]", ["web09", "web10", "web11"]),
        ("web[01-03]", ["web01", "web02", "web03"]),
        ("web[1-3,7,10-12]", ["web1", "web2", "web3", "web7", "web10", "web11", "web12"]),
        ("n[1-2]-c[1-2]", ["n1-c1", "n1-c2", "n2-c1", "n2-c2"]),
        ("10.0.0.[1-3]", ["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
        ("10.0.0.[1-2]:7421", ["10.0.0.1:7421", "10.0.0.2:7421"]),
        ("[::1]:7420", ["[::1]:7420"]),  # a bracket group with ':' is an IPv6 literal
        ("[2001:db8::5]:74[20-21]", ["[2001:db8::5]:7420", "[2001:db8::5]:7421"]),
        ("web[3,1,3]", ["web3", "web1"]),  # duplicates once, order as written
        ("web[08,9,10]", ["web08", "web9", "web10"]),  # padding per item
        ("web[1-7/3]", ["web1", "web4", "web7"]),  # ClusterShell's step
        ("web[ 1-2 ]", ["web1", "web2"]),
        ("[1-2]", ["1", "2"]),
    ],
)
def test_expand(entry, names):
    assert expand(entry) == names


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("web[3-1]", "range 3-1 goes down; write 1-3"),
        ("web[1-100000]", f"names more than {MAX_HOSTS:,} hosts"),
        ("n[1-200]-c[1-200]", f"names more than {MAX_HOSTS:,} hosts"),
        ("web[1-3", "'[' without ']'"),
        ("web1-3]", "']' without '['"),
        ("web]1[", "']' without '['"),
        ("web[[1-2]]", "brackets inside brackets"),
        ("web[]", "empty brackets"),
        ("web[,]", "an empty item"),
        ("web[1,,2]", "an empty item"),
        ("web[1-]", "'1-' in [1-]"),
        ("web[-3]", "'-3' in [-3]"),
        ("web[a-c]", "'a-c' in [a-c]"),
        ("web[1-3/0]", "step 0"),
        ("web[8-010]", "mixes two zero paddings"),
        ("web[01-1]", "mixes two zero paddings"),
    ],
)
def test_expand_refuses(entry, message):
    with pytest.raises(NodeSetError, match=None) as caught:
        expand(entry)
    assert message in str(caught.value)
    assert repr(entry) in str(caught.value)  # the error names what the user wrote


def test_the_cap_is_on_the_product_before_any_name_is_built():
    assert len(expand(f"h[1-{MAX_HOSTS}]")) == MAX_HOSTS
    with pytest.raises(NodeSetError):
        expand("a[1-1000]-b[1-1000]-c[1-1000]")  # 10^9: refused at once, not built


@pytest.mark.parametrize(
    ("spec", "entries"),
    [
        ("web[1-3,7],db1", ["web[1-3,7]", "db1"]),
        ("[::1]:7420,web1", ["[::1]:7420", "web1"]),
        ("a, b", ["a", "b"]),
        ("a,,b", ["a", "", "b"]),
        ("a,", ["a", ""]),
    ],
)
def test_split_entries_cuts_at_commas_outside_brackets(spec, entries):
    assert split_entries(spec) == entries


def test_has_ranges_tells_ranges_from_ipv6_literals():
    assert has_ranges("web[1-2]")
    assert not has_ranges("[::1]:7420")
    assert not has_ranges("web1")


def test_natural_order():
    assert natural_sorted(["web10", "web2", "web1", "db1", "web2"]) == [
        "db1",
        "web1",
        "web2",
        "web10",
    ]
    assert natural_sorted(["web09", "web9", "web10"]) == ["web9", "web09", "web10"]


# -- folding ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "folded"),
    [
        (["web1"], "web1"),
        (["web1", "web2", "web3", "web5"], "web[1-3,5]"),
        (["web10", "web2", "web1", "web2"], "web[1-2,10]"),
        (["web01", "web02", "web03", "web10"], "web[01-03,10]"),
        (["web09", "web10", "web11"], "web[09-11]"),
        (["web9", "web08", "web10"], "web[08,9,10]"),  # web9 is not web09
        (["n1-c1", "n1-c2", "n2-c1", "n2-c2"], "n[1-2]-c[1-2]"),
        (["rack1-node1", "rack1-node2", "rack2-node1"], "rack1-node[1-2],rack2-node1"),
        (["web1", "db1", "web2", "db2"], "db[1-2],web[1-2]"),
        (["10.0.0.1:7420", "10.0.0.2:7420"], "10.0.0.[1-2]:7420"),
        (["10.0.0.1:7421", "10.0.0.2:7422"], "10.0.0.1:7421,10.0.0.2:7422"),
        (["[::2]:7420", "[::1]:7420"], "[::1]:7420,[::2]:7420"),  # brackets: IPv6
        (["beta", "alpha", "alpha"], "alpha,beta"),
        ([], ""),
    ],
)
def test_fold(names, folded):
    assert fold(names) == folded


def test_fold_of_5000_names_is_fast_and_exact():
    names = [f"h{n}" for n in range(1, 5001)]
    assert fold(reversed(names)) == "h[1-5000]"


# -- properties -------------------------------------------------------------------------

_word = st.text("abcxyz-.", min_size=1, max_size=4)
_number = st.integers(0, 120).map(str) | st.integers(0, 120).map(lambda n: str(n).zfill(3))
_name = st.builds(
    lambda parts: "".join(parts),
    st.lists(st.one_of(_word, _number), min_size=1, max_size=5),
)


def _expand_set(text: str) -> list[str]:
    return [name for part in split_entries(text) if part for name in expand(part)]


@settings(max_examples=150, deadline=None)
@given(st.lists(_name, min_size=1, max_size=40))
def test_expand_of_fold_is_the_sorted_set(names):
    expanded = _expand_set(fold(names))
    assert len(expanded) == len(set(expanded))  # each name once
    assert natural_sorted(expanded) == natural_sorted(names)


def test_expand_of_fold_keeps_natural_order_for_one_dimension():
    names = ["web10", "web2", "web1", "web09"]
    assert _expand_set(fold(names)) == natural_sorted(names)


_group = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 5)), min_size=1, max_size=4).map(
    lambda items: ",".join(f"{a}-{a + b}" if b else str(a) for a, b in items)
)
_pattern = st.builds(
    lambda prefix, group, middle, group2: (
        f"{prefix}[{group}]{middle}" + (f"[{group2}]" if group2 else "")
    ),
    st.sampled_from(["web", "n", "10.0.0.", "rack-"]),
    _group,
    st.sampled_from(["", "-c", ".example.com"]),
    st.none() | _group,
)


@settings(max_examples=150, deadline=None)
@given(_pattern)
def test_fold_of_expand_is_canonical(pattern):
    names = expand(pattern)
    folded = fold(names)
    assert sorted(_expand_set(folded)) == sorted(set(names))
    assert fold(_expand_set(folded)) == folded  # a fixed point: the canonical form
    assert fold(reversed(names)) == folded  # whatever the order


def test_a_single_group_folds_back_to_its_normal_form():
    assert fold(expand("web[7,1-3,2]")) == "web[1-3,7]"
    assert fold(expand("web[01-12]")) == "web[01-12]"


@settings(max_examples=100, deadline=None)
@given(_pattern)
def test_expansion_agrees_with_clustershell(pattern):
    nodeset = pytest.importorskip("ClusterShell.NodeSet")
    assume("][" not in pattern)  # ClusterShell wants text between two groups
    assert set(expand(pattern)) == set(nodeset.NodeSet(pattern))


# -- in HOSTS -----------------------------------------------------------------------------


def test_hosts_expand_ranges_through_aliases_and_groups():
    book = HostBook(
        {"web1": "10.0.0.11", "web2": "10.0.0.12:7421"}, {"web": ["web[1-2]", "db[1-2]"]}
    )
    targets = book.resolve("@web,web[2-3]")
    assert [t.label for t in targets] == ["web1", "web2", "db1", "db2", "web3"]
    assert targets[1].host_port == "10.0.0.12:7421"


def test_exclude_removes_by_label_with_the_same_syntax():
    book = HostBook({}, {"db": ["db1", "db2"]})
    targets = book.resolve("web[1-5],@db", exclude="web[2-3],@db,nothere")
    assert [t.label for t in targets] == ["web1", "web4", "web5"]


def test_excluding_everything_is_an_error():
    with pytest.raises(HostSpecError, match="no hosts left"):
        HostBook({}, {}).resolve("web[1-2]", exclude="web[1-2]")


def test_a_bad_range_in_hosts_is_a_host_spec_error():
    with pytest.raises(HostSpecError, match="goes down"):
        HostBook({}, {}).resolve("web1,web[3-1]")


def test_hosts_cap_applies_to_the_whole_argument():
    with pytest.raises(HostSpecError, match="more than 10,000"):
        HostBook({}, {}).resolve("a[1-6000],b[1-6000]")
