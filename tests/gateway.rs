//! The local stack's Supabase-shaped gateway (devstack's `supabase-gateway`,
//! in front of postrust) applies the limits a Supabase project has: the
//! `apikey` rules of the new and legacy keys, `/rest/v1` as the only route,
//! "Max rows" on tables, views and set-returning functions (and not on a
//! function returning one value), and the roles' statement timeouts.

mod common;

use common::{unique, Gateway, Stack};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// One HTTP answer, read whole.
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text))
    }

    /// Elements of a JSON array answer.
    fn len(&self) -> usize {
        self.json()
            .as_array()
            .unwrap_or_else(|| panic!("not an array: {} {}", self.status, self.text))
            .len()
    }

    fn content_range(&self) -> String {
        self.headers
            .get("content-range")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
}

async fn send(req: reqwest::RequestBuilder) -> Reply {
    let resp = req.send().await.expect("the gateway answers");
    Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        text: resp.text().await.expect("body"),
    }
}

/// Identifiers for the schema objects a test creates.
fn ident(prefix: &str) -> String {
    unique(prefix).replace('-', "_")
}

/// Tells postrust (and the gateways) that the schema changed, then waits
/// until `function` called with `args` is found (postrust caches the schema).
async fn reload_and_wait(stack: &Stack, pg: &tokio_postgres::Client, function: &str, args: Value) {
    pg.batch_execute("NOTIFY pgrst, 'reload schema'")
        .await
        .unwrap();
    let url = format!("{}/rest/v1/rpc/{function}", stack.var("SUPABASE_URL"));
    let http = reqwest::Client::new();
    for _ in 0..100 {
        let r = send(
            http.post(&url)
                .header("apikey", stack.var("SUPABASE_SECRET_KEY"))
                .json(&args),
        )
        .await;
        if r.status != 404 && !r.text.contains("PGRST202") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("postrust did not see {function} after NOTIFY pgrst");
}

/// Waits until postrust serves `path`. A reload another test asked for can
/// finish after this test's own and put back a schema cache from before
/// its tables existed; the next reload mends it.
async fn wait_served(stack: &Stack, pg: &tokio_postgres::Client, path: &str) {
    let url = format!("{}/rest/v1{path}", stack.var("SUPABASE_URL"));
    let http = reqwest::Client::new();
    for _ in 0..100 {
        let r = send(
            http.get(&url)
                .header("apikey", stack.var("SUPABASE_SECRET_KEY")),
        )
        .await;
        if r.status == 200 {
            return;
        }
        pg.batch_execute("NOTIFY pgrst, 'reload schema'")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("postrust did not serve {path} after NOTIFY pgrst");
}

#[tokio::test]
async fn requests_need_a_known_apikey_and_the_rest_route() {
    let stack = Stack::load();
    let base = stack.var("SUPABASE_URL");
    let url = format!("{base}/rest/v1/rpc/backfill_schema_version");
    let http = reqwest::Client::new();

    let missing = send(http.post(&url).json(&json!({}))).await;
    assert_eq!(missing.status, 401, "{}", missing.text);
    assert_eq!(
        missing.json(),
        json!({"message": "No API key found in request", "hint": "No `apikey` request header or url param was found."})
    );

    let invalid = json!({"message": "Invalid API key", "hint": "Double check your Supabase `anon` or `service_role` API key."});
    // A JWT with the right shape and role, signed with another secret.
    let forged = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2lnbmF0dXJlLWRvZXMtbm90LW1hdGNo";
    let secret = stack.var("SUPABASE_SECRET_KEY");
    for key in [
        "sb_secret_NotAKeyOfThisProject0000000000",
        "sb_publishable_NotAKeyOfThisProject000000",
        forged,
        &format!("{secret}x"),
        "",
    ] {
        let r = send(http.post(&url).header("apikey", key).json(&json!({}))).await;
        if key.is_empty() {
            // An empty header is as good as none.
            assert_eq!(r.status, 401, "{}", r.text);
            continue;
        }
        assert_eq!((r.status, r.json()), (401, invalid.clone()), "{key}");
    }

    // The key may come as a query parameter, which does not reach postrust
    // (it would read it as a filter).
    let by_param = send(
        http.post(&url)
            .query(&[("apikey", secret.as_str())])
            .json(&json!({})),
    )
    .await;
    assert_eq!(by_param.status, 200, "{}", by_param.text);
    let table = send(http.get(format!("{base}/rest/v1/backfill_runs")).query(&[
        ("select", "id"),
        ("limit", "1"),
        ("apikey", &secret),
    ]))
    .await;
    assert_eq!(table.status, 200, "{}", table.text);

    // Only /rest/v1 is routed, whatever the key.
    for path in [
        "/rpc/backfill_schema_version",
        "/backfill_runs",
        "/rest/v2/backfill_runs",
        "/rest/v1x/backfill_runs",
        "/",
    ] {
        let r = send(http.post(format!("{base}{path}")).header("apikey", &secret)).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text);
        assert_eq!(
            r.json(),
            json!({"message": "no Route matched with those values"})
        );
    }
}

#[tokio::test]
async fn keys_map_to_service_role_and_anon_as_on_supabase() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let whoami = ident("gw_whoami");
    // VOLATILE: postrust must run it for each caller, never reuse an answer.
    pg.batch_execute(&format!(
        "CREATE FUNCTION public.{whoami}() RETURNS text LANGUAGE sql VOLATILE AS $$ SELECT current_user::text $$;
         REVOKE ALL ON FUNCTION public.{whoami}() FROM PUBLIC;
         GRANT EXECUTE ON FUNCTION public.{whoami}() TO anon, service_role;"
    ))
    .await
    .unwrap();
    reload_and_wait(&stack, &pg, &whoami, json!({})).await;

    let base = format!("{}/rest/v1", stack.var("SUPABASE_URL"));
    let secret = stack.var("SUPABASE_SECRET_KEY");
    let publishable = stack.var("SUPABASE_PUBLISHABLE_KEY");
    let service_jwt = stack.var("SUPABASE_SERVICE_ROLE_KEY");
    let anon_jwt = stack.var("SUPABASE_ANON_KEY");
    let browser = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36";
    let http = reqwest::Client::new();
    let role_of = |apikey: &str, authorization: Option<&str>, user_agent: Option<&str>| {
        let mut req = http
            .post(format!("{base}/rpc/{whoami}"))
            .header("apikey", apikey)
            .json(&json!({}));
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        if let Some(ua) = user_agent {
            req = req.header("User-Agent", ua);
        }
        send(req)
    };
    let expect_role = |r: Reply, role: &str, case: &str| {
        assert_eq!(r.status, 200, "{case}: {}", r.text);
        assert_eq!(r.json(), json!(role), "{case}");
    };

    expect_role(
        role_of(&secret, None, None).await,
        "service_role",
        "secret key",
    );
    expect_role(
        role_of(&publishable, None, None).await,
        "anon",
        "publishable key",
    );
    // Browsers may use the publishable key.
    expect_role(
        role_of(&publishable, None, Some(browser)).await,
        "anon",
        "publishable key from a browser",
    );
    // Legacy JWT keys: alone in apikey, or also as the bearer token.
    expect_role(
        role_of(&service_jwt, None, None).await,
        "service_role",
        "legacy service_role key",
    );
    expect_role(
        role_of(&anon_jwt, Some(&format!("Bearer {anon_jwt}")), None).await,
        "anon",
        "legacy anon key as apikey and bearer",
    );
    // A user's session JWT in Authorization goes to postrust as it is.
    expect_role(
        role_of(&publishable, Some(&format!("Bearer {service_jwt}")), None).await,
        "service_role",
        "publishable key with a session JWT",
    );

    // A secret key from a browser is refused.
    let r = role_of(&secret, None, Some(browser)).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("secret API key in browser"),
        "{}",
        r.text
    );
    // The new keys are not JWTs: never in Authorization.
    for key in [&secret, &publishable] {
        let r = role_of(key, Some(&format!("Bearer {key}")), None).await;
        assert_eq!(r.status, 401, "{}", r.text);
        assert!(r.text.contains("apikey"), "{}", r.text);
    }
    let r = role_of(&publishable, Some(&format!("Bearer {secret}")), None).await;
    assert_eq!(r.status, 401, "{}", r.text);

    // The backfill's functions are granted to service_role alone.
    let status = |apikey: &str| {
        send(
            http.post(format!("{base}/rpc/backfill_run_status"))
                .header("apikey", apikey)
                .json(&json!({})),
        )
    };
    let r = status(&secret).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = status(&publishable).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.json()["code"], "42501", "{}", r.text);

    pg.batch_execute(&format!(
        "DROP FUNCTION public.{whoami}(); NOTIFY pgrst, 'reload schema';"
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn max_rows_cuts_tables_views_and_set_returning_functions_but_not_one_value() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    const ROWS: i32 = 1200;
    let t = ident("gw_rows");
    let (view, set_fn, json_fn, flip_fn) = (
        format!("{t}_v"),
        format!("{t}_set"),
        format!("{t}_json"),
        format!("{t}_flip"),
    );
    pg.batch_execute(&format!(
        "CREATE TABLE public.{t} (id int PRIMARY KEY, label text NOT NULL);
         INSERT INTO public.{t} SELECT i, 'rad ' || i || ', \"sitert\" [x]' FROM generate_series(1, {ROWS}) i;
         CREATE VIEW public.{view} AS SELECT id, label FROM public.{t};
         CREATE FUNCTION public.{set_fn}(n int) RETURNS SETOF public.{t} LANGUAGE sql STABLE
             AS $$ SELECT * FROM public.{t} WHERE id <= n ORDER BY id $$;
         CREATE FUNCTION public.{json_fn}() RETURNS jsonb LANGUAGE sql STABLE
             AS $$ SELECT jsonb_agg(id ORDER BY id) FROM public.{t} $$;
         CREATE FUNCTION public.{flip_fn}() RETURNS jsonb LANGUAGE sql STABLE
             AS $$ SELECT jsonb_agg(i) FROM generate_series(1, 20) i $$;
         GRANT SELECT ON public.{t}, public.{view} TO service_role;
         GRANT EXECUTE ON FUNCTION public.{set_fn}(int), public.{json_fn}(), public.{flip_fn}() TO service_role;"
    ))
    .await
    .unwrap();
    reload_and_wait(&stack, &pg, &flip_fn, json!({})).await;
    wait_served(&stack, &pg, &format!("/{t}?select=id&limit=1")).await;
    wait_served(&stack, &pg, &format!("/{view}?select=id&limit=1")).await;

    let secret = stack.var("SUPABASE_SECRET_KEY");
    let http = reqwest::Client::new();
    let get =
        |base: &str, path: &str| send(http.get(format!("{base}{path}")).header("apikey", &secret));
    let post = |base: &str, function: &str, args: Value| {
        send(
            http.post(format!("{base}/rpc/{function}"))
                .header("apikey", &secret)
                .json(&args),
        )
    };

    // A private gateway with a small cap, in front of the stack's postrust.
    let small = Gateway::spawn(&stack, &stack.var("STACK_POSTREST_URL"), 5);
    let base = format!("{}/rest/v1", small.url());
    let ids = |r: &Reply| -> Vec<i64> {
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["id"].as_i64().unwrap())
            .collect()
    };

    let table = get(&base, &format!("/{t}?select=id,label&order=id")).await;
    assert_eq!(table.status, 200, "{}", table.text);
    assert_eq!(ids(&table), vec![1, 2, 3, 4, 5]);
    assert_eq!(table.content_range(), "0-4/*");
    let r = get(&base, &format!("/{view}?select=id,label&order=id")).await;
    assert_eq!(ids(&r), vec![1, 2, 3, 4, 5], "{}", r.text);
    // A smaller limit is kept; a page further on is cut from its own start.
    let r = get(&base, &format!("/{t}?select=id&order=id&limit=3")).await;
    assert_eq!(ids(&r), vec![1, 2, 3]);
    let r = get(&base, &format!("/{t}?select=id&order=id&offset=10")).await;
    assert_eq!(ids(&r), vec![11, 12, 13, 14, 15]);
    assert!(
        r.content_range().starts_with("10-14/"),
        "{}",
        r.content_range()
    );

    let r = post(&base, &set_fn, json!({"n": 100})).await;
    assert_eq!(ids(&r), vec![1, 2, 3, 4, 5], "{}", r.text);
    assert_eq!(r.content_range(), "0-4/*");
    let r = get(&base, &format!("/rpc/{set_fn}?n=100")).await;
    assert_eq!(ids(&r), vec![1, 2, 3, 4, 5], "{}", r.text);
    let r = post(&base, &set_fn, json!({"n": 3})).await;
    assert_eq!(ids(&r), vec![1, 2, 3], "a short set is left alone");

    // One jsonb value is never cut, however long an array it holds.
    let r = post(&base, &json_fn, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.len(), ROWS as usize);
    assert_eq!(r.json()[ROWS as usize - 1], json!(ROWS));

    let stats = small.stats().await;
    assert_eq!(stats["requests"][format!("/rpc/{set_fn}")], 3, "{stats}");
    assert_eq!(stats["requests"][format!("/rpc/{json_fn}")], 1, "{stats}");
    // The table, the view, the page at offset 10 and the set twice.
    assert_eq!(stats["cut"], 5, "{stats}");

    // A migration that turns a one-value function into a set-returning one
    // is seen after its NOTIFY: the gateway forgets what it knew.
    let r = post(&base, &flip_fn, json!({})).await;
    assert_eq!(r.len(), 20, "{}", r.text);
    pg.batch_execute(&format!(
        "DROP FUNCTION public.{flip_fn}();
         CREATE FUNCTION public.{flip_fn}() RETURNS SETOF int LANGUAGE sql STABLE
             AS $$ SELECT generate_series(1, 20) $$;
         GRANT EXECUTE ON FUNCTION public.{flip_fn}() TO service_role;
         NOTIFY pgrst, 'reload schema';"
    ))
    .await
    .unwrap();
    let mut cut = 0;
    for _ in 0..100 {
        let r = post(&base, &flip_fn, json!({})).await;
        if r.status == 200 && r.len() == 5 {
            cut = r.len();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cut, 5, "the new set-returning function was not cut");

    small.reset_stats().await;
    assert_eq!(small.stats().await["cut"], 0);

    // The stack's own gateway, at Supabase's default of 1,000.
    assert_eq!(stack.var("STACK_MAX_ROWS"), "1000");
    let shared = format!("{}/rest/v1", stack.var("SUPABASE_URL"));
    let r = post(&shared, &set_fn, json!({"n": ROWS})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.len(), 1000);
    assert_eq!(r.content_range(), "0-999/*");
    let r = get(&shared, &format!("/{t}?select=id&order=id")).await;
    assert_eq!(r.len(), 1000);
    let r = post(&shared, &json_fn, json!({})).await;
    assert_eq!(r.len(), ROWS as usize);
    // postrust alone does not cut the set: the gateway does.
    let direct = send(
        http.post(format!("{}/rpc/{set_fn}", stack.var("STACK_POSTREST_URL")))
            .bearer_auth(stack.var("SUPABASE_SERVICE_ROLE_KEY"))
            .json(&json!({"n": ROWS})),
    )
    .await;
    assert_eq!(direct.len(), ROWS as usize);

    pg.batch_execute(&format!(
        "DROP FUNCTION public.{set_fn}(int), public.{json_fn}(), public.{flip_fn}();
         DROP VIEW public.{view};
         DROP TABLE public.{t};
         NOTIFY pgrst, 'reload schema';"
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn statement_timeouts_are_supabases_8s_for_the_service_role_and_3s_for_anon() {
    let stack = Stack::load();
    let pg = stack.pg().await;
    let nap = ident("gw_nap");
    pg.batch_execute(&format!(
        "CREATE FUNCTION public.{nap}(seconds float8) RETURNS int LANGUAGE sql VOLATILE
             AS $$ SELECT 1 FROM pg_sleep(seconds) $$;
         REVOKE ALL ON FUNCTION public.{nap}(float8) FROM PUBLIC;
         GRANT EXECUTE ON FUNCTION public.{nap}(float8) TO anon, service_role;"
    ))
    .await
    .unwrap();
    reload_and_wait(&stack, &pg, &nap, json!({"seconds": 0})).await;

    let url = format!("{}/rest/v1/rpc/{nap}", stack.var("SUPABASE_URL"));
    let http = reqwest::Client::new();
    let call = |key: String, seconds: f64| {
        let req = http
            .post(&url)
            .header("apikey", key)
            .json(&json!({"seconds": seconds}));
        async move {
            let started = Instant::now();
            let r = send(req).await;
            (r, started.elapsed())
        }
    };
    // At once, so the test waits about 9 s in all.
    let ((service_long, t1), (service_short, _), (anon_long, t3)) = tokio::join!(
        call(stack.var("SUPABASE_SECRET_KEY"), 9.0),
        call(stack.var("SUPABASE_SECRET_KEY"), 4.0),
        call(stack.var("SUPABASE_PUBLISHABLE_KEY"), 4.0),
    );
    for (r, who) in [
        (&service_long, "service_role, 9 s"),
        (&anon_long, "anon, 4 s"),
    ] {
        assert_eq!(r.status, 500, "{who}: {}", r.text);
        assert_eq!(r.json()["code"], "57014", "{who}: {}", r.text);
    }
    assert!(
        t1 >= Duration::from_millis(7500) && t1 < Duration::from_millis(8900),
        "service_role cut after {t1:?}"
    );
    assert!(
        t3 >= Duration::from_millis(2500) && t3 < Duration::from_millis(3900),
        "anon cut after {t3:?}"
    );
    // 4 s is within the service role's limit: the 3 s is anon's alone.
    assert_eq!(service_short.status, 200, "{}", service_short.text);

    pg.batch_execute(&format!(
        "DROP FUNCTION public.{nap}(float8); NOTIFY pgrst, 'reload schema';"
    ))
    .await
    .unwrap();
}
