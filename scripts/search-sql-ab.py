#!/usr/bin/env python3
"""Times the search's SurrealQL on a filled SurrealDB server: the query of f34af2c (a page
scored and highlighted, then every match counted again) against the one in
server/src/store/search/mod.rs, alternating, on the same users and words. Reports the
database's own time per search (the sum of its statements' times), so neither HTTP nor
this script is in the figures.

Fill a server first, e.g. (see BENCHMARKS.md, "Search within conversations"):
  surreal start --bind 127.0.0.1:8123 --user root --pass root-pass surrealkv:///tmp/sdb &
  relay-loadtest --spawn-server relay-server --database ws://127.0.0.1:8123 \
    --server-env DATABASE_USER=root --server-env DATABASE_PASS=root-pass \
    search --messages 300000 --users 300 --sessions 20 --queries 300 --streams 0
then: scripts/search-sql-ab.py [searches of each kind, default 200]
"""
import base64, json, pathlib, random, re, sys, urllib.request

URL = "http://127.0.0.1:8123/sql"
AUTH = "Basic " + base64.b64encode(b"root:root-pass").decode()
SYLLABLES = ["ka", "lo", "mi", "su", "te", "ra", "no", "vi", "de", "pu", "ze", "ho", "ba", "gi", "fu", "ye", "co",
             "wa", "ni", "tor"]


def word(rank):
    """The load generator's word of this rank (loadtest/src/scenarios/words.rs)."""
    n, w = rank + len(SYLLABLES), ""
    while n > 0:
        w += SYLLABLES[n % len(SYLLABLES)]
        n //= len(SYLLABLES)
    return w


def sql(text):
    request = urllib.request.Request(URL, data=text.encode(), headers={
        "Authorization": AUTH, "surreal-ns": "relay", "surreal-db": "chat", "Accept": "application/json"})
    return json.load(urllib.request.urlopen(request))


def seconds(duration):
    value, unit = re.match(r"([0-9.]+)(ns|µs|ms|s)$", duration).groups()
    return float(value) * {"ns": 1e-9, "µs": 1e-6, "ms": 1e-3, "s": 1}[unit]


SESSIONS = ("LET $sessions = SELECT VALUE record::id(id) FROM chat_session WITH INDEX chat_session_user "
            "WHERE user_id = $user_id AND deleted_at = NONE;")
BEFORE = SESSIONS + """
LET $hits = SELECT record::id(id) AS id, session_id, role, created_at, search::score(1) AS score,
        search::highlight('[', ']', 1) AS marked
    FROM chat_message WHERE content @1@ $q AND session_id INSIDE $sessions AND superseded != true
    ORDER BY score DESC, created_at DESC LIMIT $limit START $start;
LET $titles = SELECT record::id(id) AS id, title FROM array::distinct($hits.map(|$h| type::record('chat_session', $h.session_id)));
LET $total = (SELECT count() AS total FROM chat_message
    WHERE content @1@ $q AND session_id INSIDE $sessions AND superseded != true GROUP ALL)[0].total ?? 0;
RETURN { hits: $hits.map(|$h| $h.{ id, session_id, role, created_at, marked }
    + { session_title: ($titles.find(|$t| $t.id = $h.session_id).title ?? '') }), total: $total };"""
source = (pathlib.Path(__file__).parent.parent / "server/src/store/search/mod.rs").read_text()
AFTER = SESSIONS + re.search(r'const SEARCH_AFTER_SESSIONS: &str = "(.*?)";\n', source, re.S).group(1)

searches = int(sys.argv[1]) if len(sys.argv) > 1 else 200
users = sorted(set(sql("SELECT VALUE user_id FROM chat_session;")[0]["result"]))
rng = random.Random(7)
queries = []
for i in range(searches * 2):
    # As the load generator's `search`: ranks 0, 1, 3, 7 … for one word; three of the 30 commonest.
    q = word((1 << rng.randrange(15)) - 1) if i % 2 == 0 else " ".join(word(rng.randrange(30)) for _ in range(3))
    queries.append((rng.choice(users), q))


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


for name, body in [("before", BEFORE), ("after", AFTER), ("before", BEFORE), ("after", AFTER)]:
    took, totals = {1: [], 3: []}, 0
    for user, q in queries:
        answer = sql(f"LET $user_id = '{user}'; LET $q = '{q}'; LET $start = 0; LET $limit = 20;" + body)
        took[len(q.split())].append(1000 * sum(seconds(r["time"]) for r in answer))
        totals += answer[-1]["result"]["total"]
    print(f"{name:6}", *(f"{'one word' if k == 1 else 'three words'} p50/p90/p99/max "
                         + "/".join(f"{v:.0f}" for v in (percentile(t, .5), percentile(t, .9), percentile(t, .99), max(t)))
                         + " ms" for k, t in took.items()), f"(matches in all: {totals})")
