"""Which storage account's blob URLs start runs, from the settings of either mode; the name rule."""

from __future__ import annotations

import pytest

from shared.blobs.account import BlobAccount, NotThisAccount, name_problem
from shared.settings import Settings


@pytest.mark.parametrize(
    ("env", "endpoint"),
    [
        ({}, "http://127.0.0.1:10000/devstoreaccount1"),
        ({"CONVEYOR_AZURITE_BLOB_PORT": "41000"}, "http://127.0.0.1:41000/devstoreaccount1"),
        ({"CONVEYOR_STORAGE_CONNECTION": "UseDevelopmentStorage=true"}, "http://127.0.0.1:10000/devstoreaccount1"),
        (
            {
                "CONVEYOR_STORAGE_CONNECTION": "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;"
                "EndpointSuffix=core.windows.net"
            },
            "https://acct.blob.core.windows.net",
        ),
        (
            {"CONVEYOR_MODE": "azure", "CONVEYOR_STORAGE__accountName": "prodacct"},
            "https://prodacct.blob.core.windows.net",
        ),
        (
            {"CONVEYOR_MODE": "azure", "CONVEYOR_STORAGE__blobServiceUri": "https://prodacct.blob.core.windows.net/"},
            "https://prodacct.blob.core.windows.net",
        ),
    ],
)
def test_the_account_is_the_blob_adapters(env: dict[str, str], endpoint: str) -> None:
    account = BlobAccount.from_settings(Settings.from_env(env))
    assert account.url == endpoint


def test_urls_of_the_account_only() -> None:
    azure = BlobAccount.parse("https://prodacct.blob.core.windows.net")
    assert azure.split("https://PRODACCT.blob.core.windows.net/landing/a%20b.csv") == ("landing", "a b.csv")
    assert azure.split("https://prodacct.blob.core.windows.net:443/landing/x") == ("landing", "x")
    for url, why in [
        ("http://prodacct.blob.core.windows.net/landing/x", "scheme"),
        ("https://other.blob.core.windows.net/landing/x", "host"),
        ("https://prodacct.blob.core.windows.net.evil.example/landing/x", "host"),
        ("https://prodacct.blob.core.windows.net:8443/landing/x", "port"),
    ]:
        with pytest.raises(NotThisAccount, match=why):
            azure.split(url)
    local = BlobAccount.parse("http://127.0.0.1:10000/devstoreaccount1")
    assert local.split("http://localhost:10000/devstoreaccount1/landing/x.csv") == ("landing", "x.csv")
    with pytest.raises(NotThisAccount, match="path"):
        local.split("http://127.0.0.1:10000/devstoreaccount2/landing/x.csv")
    with pytest.raises(ValueError, match="names no blob"):
        local.split("http://127.0.0.1:10000/devstoreaccount1/landing")


@pytest.mark.parametrize(
    "name", ["a.csv", "sales/2024/part 1.csv", "données/été.csv", "a;b$(c)`d'e\".csv", "100%.csv", "dir/", "a//b"]
)
def test_ordinary_names_are_accepted(name: str) -> None:
    assert name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "empty"),
        ("x" * 1025, "longer"),
        ("..", "'..'"),
        ("a/../b", "'..'"),
        ("a/./b", "'.'"),
        ("%2e%2e/b", "percent-decoded, has a '..'"),
        ("a%2F..%2Fb", "percent-decoded, has a '..'"),
        ("%25252e%25252e/b", "percent-decoded, has a '..'"),
        ("a%5cb", "percent-decoded, contains a backslash"),
        ("a%0Ab", "percent-decoded, contains the control character U+000A"),
        ("a\\b", "backslash"),
        ("/abs", "starts with '/'"),
        ("a\tb", "U+0009"),
        ("a\x00b", "U+0000"),
        ("a\x7fb", "U+007F"),
        ("a\x9bb", "U+009B"),
        ("a\ud800b", "surrogate"),
        ("%" + "25" * 6 + "2e", "more than"),
    ],
)
def test_refused_names_say_why(name: str, problem: str) -> None:
    got = name_problem(name)
    assert got is not None and problem in got
