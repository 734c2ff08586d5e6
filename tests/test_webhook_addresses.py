import re

import pytest

from core.webhooks import Target, UnresolvableHost, UnsafeWebhookURL, check_url_syntax, resolve_target


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1/hook", "127.0.0.1 is loopback"),
        ("http://10.1.2.3/hook", "10.1.2.3 is private"),
        ("http://172.16.0.9/hook", "172.16.0.9 is private"),
        ("http://192.168.1.1/hook", "192.168.1.1 is private"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254 is link-local"),
        ("http://100.64.0.1/hook", "100.64.0.1 is not globally routable"),
        ("http://0.0.0.0/hook", "0.0.0.0 is unspecified"),
        ("http://224.0.0.1/hook", "224.0.0.1 is multicast"),
        ("http://240.0.0.1/hook", "240.0.0.1 is reserved"),
        ("http://[::1]/hook", "::1 is loopback"),
        ("http://[::]/hook", ":: is unspecified"),
        ("http://[fe80::1]/hook", "fe80::1 is link-local"),
        ("http://[fc00::1]/hook", "fc00::1 is private"),
        ("http://[ff02::1]/hook", "ff02::1 is multicast"),
        ("http://[::ffff:127.0.0.1]/hook", "::ffff:7f00:1 is loopback (IPv4 127.0.0.1)"),
        ("http://[::ffff:10.0.0.1]/hook", "::ffff:a00:1 is private (IPv4 10.0.0.1)"),
        ("http://[2002:7f00:1::]/hook", "2002:7f00:1:: is loopback (IPv4 127.0.0.1)"),
        ("http://localhost:8080/hook", "127.0.0.1 is loopback"),
    ],
)
def test_non_public_addresses_are_refused(url: str, kind: str) -> None:
    with pytest.raises(UnsafeWebhookURL) as caught:
        resolve_target(url, allow_private=False)
    assert caught.value.rule == f"webhook URL must resolve to a public address; {kind}"
    assert str(caught.value) == caught.value.rule
    assert isinstance(caught.value, ValueError)


def test_literal_public_addresses_need_no_dns() -> None:
    target = resolve_target("https://93.184.215.14:8443/hooks/in?x=1#frag", allow_private=False)
    assert target == Target("https", "93.184.215.14", 8443, "/hooks/in?x=1", ("93.184.215.14",), "93.184.215.14")
    assert target.host_header == "93.184.215.14:8443"


def test_literal_public_ipv6_address_is_allowed() -> None:
    target = resolve_target("http://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]", allow_private=False)
    assert target.connect_address == "2606:2800:21f:cb07:6820:80da:af6b:8b2c"
    assert target.path == "/"
    assert target.host_header == "[2606:2800:21f:cb07:6820:80da:af6b:8b2c]"


def test_allow_private_lets_loopback_through() -> None:
    target = resolve_target("http://localhost:8080/hook", allow_private=True)
    assert target.host == "localhost"
    assert target.port == 8080
    assert "127.0.0.1" in target.addresses
    assert target.connect_address == target.addresses[0]
    assert target.host_header == "localhost:8080"
    assert resolve_target("http://[::1]/", allow_private=True).connect_address == "::1"


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("ftp://example.com/hook", "must use http or https"),
        ("file:///etc/passwd", "must use http or https"),
        ("gopher://example.com/", "must use http or https"),
        ("example.com/hook", "must use http or https"),
        ("http:///hook", "must name a host"),
        ("http://user:pw@example.com/hook", "must not contain a user name or password"),
        ("http://user@example.com/hook", "must not contain a user name or password"),
        ("http://example.com:0/", "port must be between 1 and 65535"),
        ("http://example.com:99999/", "must be a valid URL"),
        ("http://[::1/", "must be a valid URL"),
        ("http://example.com/a b", "without spaces or control characters"),
        ("http://example.com/\r\nHost: evil", "without spaces or control characters"),
        ("http://exämple.com/", "must be ASCII"),
        ("http://127.1/", "DNS name or an IP address in canonical form"),
        ("http://0x7f.1/", "DNS name or an IP address in canonical form"),
        ("http://2130706433/", "DNS name or an IP address in canonical form"),
        ("http://evil.com\\@good.com/", "must not contain a user name or password"),
        ("http://good.com\\evil.com/", "DNS name or an IP address in canonical form"),
        ("http://example.com/" + "a" * 2048, "at most 2048 characters"),
    ],
)
def test_malformed_urls_are_refused_without_dns(url: str, rule: str) -> None:
    with pytest.raises(UnsafeWebhookURL, match=re.escape(rule)):
        check_url_syntax(url, allow_private=True)
    with pytest.raises(UnsafeWebhookURL, match=re.escape(rule)):
        resolve_target(url, allow_private=True)


def test_syntax_check_refuses_private_literals_but_leaves_names_to_resolution() -> None:
    with pytest.raises(UnsafeWebhookURL, match=re.escape("10.0.0.1 is private")):
        check_url_syntax("http://10.0.0.1/")
    check_url_syntax("http://10.0.0.1/", allow_private=True)
    check_url_syntax("https://hooks.example.com/in")
    check_url_syntax("http://localhost/")


def test_unresolvable_host_is_not_an_unsafe_url() -> None:
    with pytest.raises(UnresolvableHost, match=re.escape("could not resolve nowhere.invalid")):
        resolve_target("https://nowhere.invalid/hook", allow_private=False)
