"""The test-run cache of werkzeug URL builders (``tests/conftest.py``): apps share each
route's compiled builders and still build the same URLs; a rule with a default inside its
path keeps a builder of its own."""

from __future__ import annotations

from flask import Flask, url_for
from werkzeug.routing import Map, Rule

from app import create_app
from tests.conftest import base_config, close_app


def test_two_apps_share_each_routes_builder_and_build_the_same_urls(tmp_path, dummy_site):
    first = create_app(base_config(tmp_path / "one", dummy_site))
    second = create_app(base_config(tmp_path / "two", dummy_site))
    try:
        rules = [{r.rule: r for r in app.url_map.iter_rules()} for app in (first, second)]
        assert rules[0].keys() == rules[1].keys()
        for path, rule in rules[0].items():
            other = rules[1][path]
            assert rule is not other
            assert rule._build.__func__ is other._build.__func__, path
            assert rule._build.__self__ is rule and other._build.__self__ is other
        urls = []
        for app in (first, second):
            with app.test_request_context():
                urls.append(
                    (url_for("static", filename="a b.css"), url_for("static", filename="x", v=1))
                )
        assert urls[0] == urls[1] == ("/static/a%20b.css", "/static/x?v=1")
    finally:
        close_app(first)
        close_app(second)


def test_a_default_inside_the_path_is_compiled_for_its_own_rule():
    built = []
    for page in (1, 2):
        urls = Map([Rule("/list/<int:page>", endpoint="list", defaults={"page": page})])
        built.append(urls.bind("example.org").build("list", {}))
    assert built == ["/list/1", "/list/2"]


def test_other_rules_with_one_path_build_their_own_arguments():
    app = Flask(__name__)
    app.add_url_rule("/item/<int:number>", "item", lambda number: "")
    with app.test_request_context():
        assert url_for("item", number=7) == "/item/7"
        assert url_for("item", number=8, q="x y") == "/item/8?q=x+y"
