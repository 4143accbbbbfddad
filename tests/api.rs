//! The HTTP API (`idem serve`'s router) over real PostgreSQL and the Stripe simulator:
//! auth and scopes, bad input with clear errors, idempotent submission under concurrency,
//! and a receipt read back after a real worker settled the action.

use std::sync::Arc;
use std::time::Duration;

use idem_api::{router, ApiState, RateLimit, MAX_BODY};
use idem_sim::{SimServer, StripeSimConfig};
use idem_store::tokens::{self, Scope};
use idem_testkit::{stripe_cells, RunningWorker, StripeFixture, TestDb};
use serde_json::{json, Value};

struct Api {
    db: TestDb,
    stripe: StripeFixture,
    _server: SimServer,
    base: String,
    http: reqwest::Client,
}

fn cells(stripe: &StripeFixture) -> idem_cells::Registry {
    // Charges of 500.00 and more wait for a person.
    stripe_cells(stripe, Some(50_000))
}

impl Api {
    async fn start() -> Self {
        Self::start_limited(RateLimit::default()).await
    }

    async fn start_limited(limit: RateLimit) -> Self {
        let db = TestDb::new().await;
        let stripe = StripeFixture::start(StripeSimConfig::default()).await;
        let app = router(ApiState::with_rate_limit(
            db.store.clone(),
            Arc::new(cells(&stripe)),
            limit,
        ));
        let server = SimServer::start(app, ([127, 0, 0, 1], 0).into())
            .await
            .unwrap();
        Self {
            base: server.base_url(),
            _server: server,
            db,
            stripe,
            http: reqwest::Client::new(),
        }
    }

    async fn token(&self, scopes: &[Scope]) -> String {
        tokens::create(self.db.store.pool(), "test", scopes)
            .await
            .unwrap()
            .1
    }

    async fn post(&self, token: Option<&str>, body: String) -> (u16, Value) {
        let mut rb = self
            .http
            .post(format!("{}/v1/actions", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn post_json(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

fn charge(id: &str, amount: i64) -> String {
    json!({"cell": "stripe.charge", "action_id": id, "args": {"amount": amount, "currency": "usd"}})
        .to_string()
}

#[tokio::test]
async fn every_endpoint_but_health_wants_a_token_with_the_right_scope() {
    let api = Api::start().await;
    let r = api
        .http
        .get(format!("{}/v1/health", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let id = uuid::Uuid::new_v4().to_string();
    let (s, b) = api.post(None, charge(&id, 500)).await;
    assert_eq!(s, 401, "{b}");
    assert!(b["error"].as_str().unwrap().contains("bearer"));
    let (s, _) = api.post(Some("idem_0000"), charge(&id, 500)).await;
    assert_eq!(s, 401);
    let reader = api.token(&[Scope::Read]).await;
    let (s, b) = api.post(Some(&reader), charge(&id, 500)).await;
    assert_eq!(s, 403, "{b}");
    assert!(b["error"].as_str().unwrap().contains("submit"));
    let submitter = api.token(&[Scope::Submit]).await;
    let (s, _) = api.get(&submitter, &format!("/v1/actions/{id}")).await;
    assert_eq!(s, 403, "submit does not imply read");
    // Revoked tokens stop working at once.
    let t = tokens::authenticate(api.db.store.pool(), &submitter)
        .await
        .unwrap()
        .unwrap();
    tokens::revoke(api.db.store.pool(), t.id).await.unwrap();
    let (s, _) = api.post(Some(&submitter), charge(&id, 500)).await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let api = Api::start().await;
    let t = api.token(&[Scope::Submit, Scope::Read]).await;
    let id = uuid::Uuid::new_v4().to_string();
    let cases = [
        ("{not json".to_owned(), 400, "bad request body"),
        (json!({"cell": "stripe.charge", "args": {"amount": 5, "currency": "usd"}}).to_string(), 422, "is required"),
        (json!({"cell": "stripe.charge", "intent_scope": "s1", "args": {"amount": 5, "currency": "usd"}}).to_string(), 422, "intent is required"),
        (json!({"cell": "stripe.charge", "intent": "pay", "args": {"amount": 5, "currency": "usd"}}).to_string(), 422, "intent_scope"),
        (json!({"cell": "fax.send", "action_id": id, "args": {}}).to_string(), 422, "unknown cell"),
        (json!({"cell": "Stripe Charge", "action_id": id, "args": {}}).to_string(), 422, "cell"),
        (json!({"cell": "stripe.charge", "action_id": "42", "args": {}}).to_string(), 422, "UUID"),
        (json!({"cell": "stripe.charge", "action_id": id, "args": [5]}).to_string(), 422, "object"),
        (json!({"cell": "stripe.charge", "action_id": id, "args": {"amount": 5}}).to_string(), 422, "currency"),
        (json!({"cell": "stripe.charge", "action_id": id, "args": {"amount": 5, "currency": "usd"}, "extra": 1}).to_string(), 422, "extra"),
        (format!("{{\"cell\":\"stripe.charge\",\"action_id\":\"{id}\",\"args\":{{\"description\":\"{}\"}}}}", "x".repeat(MAX_BODY)), 413, ""),
    ];
    for (body, want, says) in cases {
        let (s, b) = api.post(Some(&t), body).await;
        assert_eq!(s, want, "{b}");
        if !says.is_empty() {
            assert!(
                b["error"].as_str().unwrap_or_default().contains(says),
                "{says}: {b}"
            );
        }
    }
    // Schema violations name the field.
    for (args, field, says) in [
        (
            json!({"amount": "5", "currency": "usd"}),
            "/args/amount",
            "integer",
        ),
        (
            json!({"amount": 0, "currency": "usd"}),
            "/args/amount",
            "minimum",
        ),
        (
            json!({"amount": 5, "currency": "USD"}),
            "/args/currency",
            "^[a-z]{3}$",
        ),
        (
            json!({"amount": 5, "currency": "usd", "colour": 1}),
            "/args",
            "colour",
        ),
    ] {
        let body = json!({"cell": "stripe.charge", "action_id": id, "args": args}).to_string();
        let (s, b) = api.post(Some(&t), body).await;
        assert_eq!(s, 422, "{b}");
        assert_eq!(b["field"], field, "{b}");
        assert!(b["error"].as_str().unwrap().contains(says), "{says}: {b}");
    }
    // Text PostgreSQL cannot store is a 422 naming the field, never a 503 inviting a retry.
    for (body, field) in [
        (
            json!({"cell": "stripe.charge", "action_id": id,
                   "args": {"amount": 5, "currency": "usd", "description": "a\0b"}}),
            "/args/description",
        ),
        (
            json!({"cell": "stripe.charge", "action_id": id, "ordering_key": "k\0",
                   "args": {"amount": 5, "currency": "usd"}}),
            "/ordering_key",
        ),
        (
            json!({"cell": "stripe.charge", "intent_scope": "s\0", "intent": "pay",
                   "args": {"amount": 5, "currency": "usd"}}),
            "/intent_scope",
        ),
    ] {
        let (s, b) = api.post(Some(&t), body.to_string()).await;
        assert_eq!(s, 422, "{b}");
        assert_eq!(b["field"], field, "{b}");
        assert!(b["error"].as_str().unwrap().contains("NUL"), "{b}");
    }
    // Not JSON at all, by content type.
    let r = api
        .http
        .post(format!("{}/v1/actions", api.base))
        .bearer_auth(&t)
        .header("content-type", "text/plain")
        .body(charge(&id, 5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM idem.actions")
        .fetch_one(api.db.store.pool())
        .await
        .unwrap();
    assert_eq!(n, 0, "nothing written");
    // An id reused with other arguments is a conflict.
    let (s, _) = api.post(Some(&t), charge(&id, 500)).await;
    assert_eq!(s, 201);
    let (s, b) = api.post(Some(&t), charge(&id, 501)).await;
    assert_eq!(s, 409, "{b}");
    assert!(b["error"].as_str().unwrap().contains("other arguments"));
    let (s, _) = api.get(&t, "/v1/actions/not-a-uuid").await;
    assert_eq!(s, 400);
    let (s, _) = api
        .get(&t, &format!("/v1/actions/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn the_same_post_ten_times_at_once_is_one_action_and_one_effect() {
    let api = Api::start().await;
    let t = api.token(&[Scope::Submit, Scope::Read]).await;
    let id = uuid::Uuid::new_v4().to_string();
    let api = Arc::new(api);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (api, t, id) = (api.clone(), t.clone(), id.clone());
        set.spawn(async move { api.post(Some(&t), charge(&id, 4200)).await });
    }
    let mut answers = vec![];
    while let Some(r) = set.join_next().await {
        answers.push(r.unwrap());
    }
    assert_eq!(
        answers.iter().filter(|(s, _)| *s == 201).count(),
        1,
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|(s, _)| *s == 200).count(),
        9,
        "{answers:?}"
    );
    for (_, b) in &answers {
        assert_eq!(b["action_id"], id.as_str());
    }
    // A real worker settles it; the receipt is read back with a long poll.
    let worker = RunningWorker::start(&api.db.store, cells(&api.stripe));
    let (s, b) = api.get(&t, &format!("/v1/actions/{id}?wait=20s")).await;
    assert_eq!(s, 200);
    assert_eq!(b["state"], "succeeded", "{b}");
    assert!(b["receipt"]["partner_ref"]
        .as_str()
        .unwrap()
        .starts_with("pi_"));
    assert_eq!(api.stripe.sim.effects_for(&id), 1);
    assert_eq!(api.stripe.sim.requests().len(), 1);
    worker.stop().await;
}

#[tokio::test]
async fn approvals_and_doubts_over_http_are_audited_with_the_token_name() {
    let api = Api::start().await;
    let submit = api.token(&[Scope::Submit, Scope::Read]).await;
    let approver = tokens::create(api.db.store.pool(), "ops-alice", &[Scope::Approve])
        .await
        .unwrap()
        .1;
    let (big, other) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    assert_eq!(api.post(Some(&submit), charge(&big, 60_000)).await.0, 201);
    assert_eq!(api.post(Some(&submit), charge(&other, 70_000)).await.0, 201);
    // Who submitted it is recorded for the approver: the submitting token's name.
    let (s, a) = api.get(&submit, &format!("/v1/actions/{big}")).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["submitted_by"], "token:test", "{a}");
    let worker = RunningWorker::start(&api.db.store, cells(&api.stripe));
    // Both wait for a person; nothing is sent.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let pending = loop {
        let (s, b) = api.get(&approver, "/v1/approvals").await;
        assert_eq!(s, 200, "{b}");
        if b.as_array().unwrap().len() == 2 {
            break b;
        }
        if tokio::time::Instant::now() >= deadline {
            let rows: Vec<(String, Option<String>)> =
                sqlx::query_as("SELECT state, reason FROM idem.actions")
                    .fetch_all(api.db.store.pool())
                    .await
                    .unwrap();
            panic!("{b} {rows:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(api.stripe.sim.requests().len(), 0);
    assert_eq!(
        api.get(&submit, "/v1/approvals").await.0,
        403,
        "approve scope needed"
    );
    let fp = pending
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["action_id"] == big.as_str())
        .unwrap()["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, b) = api
        .post_json(
            &approver,
            &format!("/v1/approvals/{big}/approve"),
            json!({"fingerprint": "00"}),
        )
        .await;
    assert_eq!(s, 409, "an approval of other arguments is refused: {b}");
    let (s, b) = api
        .post_json(
            &approver,
            &format!("/v1/approvals/{big}/approve"),
            json!({"fingerprint": fp, "reason": "known customer"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["by"], "token:ops-alice");
    let fp_other = pending
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["action_id"] == other.as_str())
        .unwrap()["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _) = api
        .post_json(
            &approver,
            &format!("/v1/approvals/{other}/reject"),
            json!({"fingerprint": fp_other}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, b) = api
        .get(&submit, &format!("/v1/actions/{big}?wait=20"))
        .await;
    assert_eq!(b["state"], "succeeded", "{b}");
    let (_, b) = api.get(&submit, &format!("/v1/actions/{other}")).await;
    assert_eq!(b["state"], "rejected", "{b}");
    assert_eq!(api.stripe.sim.effects_for(&big), 1);
    assert_eq!(api.stripe.sim.effects_for(&other), 0);
    // No doubts; resolving a settled action is a conflict, with a reason required.
    let (s, b) = api.get(&approver, "/v1/doubts").await;
    assert_eq!((s, b.as_array().map(Vec::len)), (200, Some(0)));
    let (s, _) = api
        .post_json(
            &approver,
            &format!("/v1/doubts/{big}/resolve"),
            json!({"outcome": "retry", "reason": ""}),
        )
        .await;
    assert_eq!(s, 422);
    let (s, b) = api
        .post_json(
            &approver,
            &format!("/v1/doubts/{big}/resolve"),
            json!({"outcome": "retry", "reason": "why not"}),
        )
        .await;
    assert_eq!(s, 409, "{b}");
    // Checking the partner again, or sending again, applies only to needs_human / failed.
    let (s, b) = api
        .post_json(
            &approver,
            &format!("/v1/doubts/{big}/resolve"),
            json!({"outcome": "recheck", "reason": "look again"}),
        )
        .await;
    assert_eq!(s, 409, "{b}");
    let (s, b) = api
        .post_json(
            &approver,
            &format!("/v1/actions/{other}/resend"),
            json!({"reason": "try it"}),
        )
        .await;
    assert_eq!(s, 409, "a rejected action is not sent again: {b}");
    assert_eq!(api.stripe.sim.effects_for(&other), 0);

    // A declined card fails (no effect); a person sends it again over HTTP, audited, under
    // a fresh key; Stripe declines again and nothing was charged.
    let declined = uuid::Uuid::new_v4().to_string();
    let body = json!({"cell": "stripe.charge", "action_id": declined,
                      "args": {"amount": 900, "currency": "usd", "payment_method": "pm_card_chargeDeclined"}});
    assert_eq!(api.post(Some(&submit), body.to_string()).await.0, 201);
    let (_, b) = api
        .get(&submit, &format!("/v1/actions/{declined}?wait=20"))
        .await;
    assert_eq!(b["state"], "failed", "{b}");
    let (s, b) = api
        .post_json(
            &approver,
            &format!("/v1/actions/{declined}/resend"),
            json!({"reason": ""}),
        )
        .await;
    assert_eq!(s, 422, "a reason is required: {b}");
    let (s, b) = api
        .post_json(
            &submit,
            &format!("/v1/actions/{declined}/resend"),
            json!({"reason": "customer updated the card"}),
        )
        .await;
    assert_eq!(s, 403, "approve scope needed: {b}");
    let (s, b) = api
        .post_json(
            &approver,
            &format!("/v1/actions/{declined}/resend"),
            json!({"reason": "customer updated the card"}),
        )
        .await;
    assert_eq!(
        (s, b["decision"].as_str(), b["by"].as_str()),
        (200, Some("retry_scheduled"), Some("token:ops-alice")),
        "{b}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let keys: Vec<(i32, Option<String>)> = loop {
        let keys: Vec<(i32, Option<String>)> = sqlx::query_as(
            "SELECT t.key_generation, t.idem_key FROM idem.attempts t JOIN idem.actions a USING (action_id) \
             WHERE action_id = $1 AND a.state = 'failed' ORDER BY number",
        )
        .bind(uuid::Uuid::parse_str(&declined).unwrap())
        .fetch_all(api.db.store.pool())
        .await
        .unwrap();
        if keys.len() == 2 {
            break keys;
        }
        assert!(tokio::time::Instant::now() < deadline, "{keys:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(keys[0].1, keys[1].1, "a fresh key: {keys:?}");
    assert_eq!(api.stripe.sim.effects_for(&declined), 0, "nothing charged");
    let (s, b) = api.get(&submit, "/v1/cells").await;
    assert_eq!(s, 200);
    assert_eq!(b[0]["name"], "stripe.charge");
    worker.stop().await;
}

#[tokio::test]
async fn each_token_has_its_own_rate_limit() {
    let limit = RateLimit {
        per_second: std::num::NonZeroU32::new(1).unwrap(),
        burst: std::num::NonZeroU32::new(3).unwrap(),
    };
    let api = Api::start_limited(limit).await;
    let busy = api.token(&[Scope::Read]).await;
    let calm = api.token(&[Scope::Read]).await;
    for _ in 0..3 {
        assert_eq!(api.get(&busy, "/v1/cells").await.0, 200);
    }
    let r = api
        .http
        .get(format!("{}/v1/cells", api.base))
        .bearer_auth(&busy)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&after), "Retry-After {after}");
    let b: Value = r.json().await.unwrap();
    assert!(b["error"].as_str().unwrap().contains("rate limit"), "{b}");
    // Another token is not slowed by the first.
    assert_eq!(api.get(&calm, "/v1/cells").await.0, 200);
    // A bad token is refused before it can drain anyone's bucket.
    assert_eq!(api.get("idem_nope", "/v1/cells").await.0, 401);
}

/// The document is generated from the handlers; this pins it to the routes the router
/// serves (each documented operation answers, and answers 401 without a token) and to the
/// committed `docs/openapi.json` (regenerate with `idem openapi > docs/openapi.json`).
#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let api = Api::start().await;
    let r = api
        .http
        .get(format!("{}/openapi.json", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let doc: Value = r.json().await.unwrap();
    // The committed document with this server's cells filled in: one Submit branch per
    // cell (its arguments' schema), and the cell and tool names as enums.
    assert_eq!(
        doc,
        idem_api::served_document(idem_api::openapi(), &cells(&api.stripe))
    );
    let branches = doc["components"]["schemas"]["Submit"]["oneOf"]
        .as_array()
        .unwrap();
    assert_eq!(branches.len(), cells(&api.stripe).iter().count());
    assert_eq!(branches[0]["properties"]["cell"]["const"], "stripe.charge");
    let mut ops = vec![];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    ops.sort();
    assert_eq!(
        ops,
        [
            "GET /metrics",
            "GET /v1/actions/{id}",
            "GET /v1/approvals",
            "GET /v1/cells",
            "GET /v1/dead-letters",
            "GET /v1/doubts",
            "GET /v1/health",
            "GET /v1/policy",
            "GET /v1/tools",
            "POST /v1/actions",
            "POST /v1/actions/{id}/resend",
            "POST /v1/approvals/{id}/approve",
            "POST /v1/approvals/{id}/reject",
            "POST /v1/dead-letters/{id}/replay",
            "POST /v1/doubts/{id}/resolve",
            "POST /v1/tools/{name}",
            "PUT /v1/policy/{cell}",
        ]
    );
    let some_id = uuid::Uuid::new_v4();
    for op in &ops {
        let (method, path) = op.split_once(' ').unwrap();
        let url = format!(
            "{}{}",
            api.base,
            path.replace("{id}", &some_id.to_string())
                .replace("{cell}", "stripe.charge")
                .replace("{name}", "stripe_charge")
        );
        let rb = match method {
            "GET" => api.http.get(url),
            "PUT" => api.http.put(url).json(&json!({})),
            _ => api.http.post(url).json(&json!({})),
        };
        let status = rb.send().await.unwrap().status().as_u16();
        let secured = doc["paths"][path][method.to_lowercase()]["security"].is_array();
        let want = if path == "/v1/health" { 200 } else { 401 };
        assert_eq!(status, want, "{op}");
        assert_eq!(secured, want == 401, "{op}: security documented");
    }
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/openapi.json"
        ))
        .expect("docs/openapi.json: generate it with `idem openapi > docs/openapi.json`"),
    )
    .unwrap();
    assert!(
        committed == serde_json::to_value(idem_api::openapi()).unwrap(),
        "docs/openapi.json is stale: run `cargo run --bin idem -- openapi > docs/openapi.json`"
    );
}

#[tokio::test]
async fn a_submitted_traceparent_is_the_trace_the_action_carries() {
    let api = Api::start().await;
    let t = api.token(&[Scope::Submit]).await;
    let id = uuid::Uuid::new_v4();
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = api
        .http
        .post(format!("{}/v1/actions", api.base))
        .bearer_auth(&t)
        .header("traceparent", parent)
        .json(&json!({"cell": "stripe.charge", "action_id": id, "args": {"amount": 5, "currency": "usd"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let row = idem_store::inbox::get(api.db.store.pool(), idem_core::ActionId::from(id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.trace.to_json()["traceparent"], parent);
}

/// An agent re-plans "pay invoice 42" with another amount under the same named intent:
/// a 409 naming the first action, and the partner's ledger keeps one effect.
#[tokio::test]
async fn the_same_intent_with_another_amount_is_a_conflict_and_one_effect() {
    let api = Api::start().await;
    let t = api.token(&[Scope::Submit, Scope::Read]).await;
    let submit = |amount: i64, description: &str| {
        json!({"cell": "stripe.charge", "intent_scope": "conversation-7", "intent": "invoice-42-payment",
               "args": {"amount": amount, "currency": "usd", "description": description}})
        .to_string()
    };
    let (s, first) = api.post(Some(&t), submit(4200, "Invoice 42")).await;
    assert_eq!(s, 201, "{first}");
    let id = first["action_id"].as_str().unwrap().to_owned();
    let expected = idem_core::ActionId::from_intent("conversation-7", "invoice-42-payment");
    assert_eq!(id, expected.to_string());
    // The same call retried: the same action.
    let (s, again) = api.post(Some(&t), submit(4200, "Invoice 42")).await;
    assert_eq!((s, again["action_id"].as_str()), (200, Some(id.as_str())));
    // Re-planned with another amount or a reworded description: a conflict.
    for (amount, description) in [(4300, "Invoice 42"), (4200, "Pay invoice #42")] {
        let (s, b) = api.post(Some(&t), submit(amount, description)).await;
        assert_eq!(s, 409, "{b}");
        assert_eq!(b["action_id"], id.as_str(), "{b}");
        assert!(
            b["error"].as_str().unwrap().contains("invoice-42-payment"),
            "{b}"
        );
    }
    let worker = RunningWorker::start(&api.db.store, cells(&api.stripe));
    let (s, b) = api.get(&t, &format!("/v1/actions/{id}?wait=20s")).await;
    assert_eq!((s, b["state"].as_str()), (200, Some("succeeded")), "{b}");
    worker.stop().await;
    assert_eq!(api.stripe.sim.ledger().len(), 1, "one effect in the ledger");
    assert_eq!(api.stripe.sim.effects_for(&id), 1);
    let (scope, intent): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT intent_scope, intent FROM idem.actions WHERE action_id = $1::uuid")
            .bind(&id)
            .fetch_one(api.db.store.pool())
            .await
            .unwrap();
    assert_eq!(scope.as_deref(), Some("conversation-7"));
    assert_eq!(intent.as_deref(), Some("invoice-42-payment"));
}

/// The fleet's policy over HTTP: an approve-scope token changes a rule (audited with the
/// token's name), a read-scope token reads it, and bad rules name the field.
#[tokio::test]
async fn policy_is_set_over_http_with_the_approve_scope_and_audited() {
    let api = Api::start().await;
    let reader = api.token(&[Scope::Read]).await;
    let approver = api.token(&[Scope::Approve, Scope::Read]).await;
    let put = |token: String, cell: &'static str, body: Value| {
        let http = api.http.clone();
        let url = format!("{}/v1/policy/{cell}", api.base);
        async move {
            let r = http
                .put(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let body = json!({"rule": "amount>=100000", "reason": "quarter-end review"});
    let (s, _) = put(reader.clone(), "stripe.charge", body.clone()).await;
    assert_eq!(s, 403);
    let (s, b) = put(approver.clone(), "stripe.charge", body).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["rule"], "amount>=100000");
    assert_eq!(b["changed_by"], "human:api:test");
    for (cell, body, field) in [
        (
            "stripe.charge",
            json!({"rule": "amount>lots", "reason": "x"}),
            "/rule",
        ),
        (
            "fax.send",
            json!({"rule": "always", "reason": "x"}),
            "/cell",
        ),
        (
            "stripe.charge",
            json!({"rule": "always", "reason": " "}),
            "/reason",
        ),
    ] {
        let (s, b) = put(approver.clone(), cell, body).await;
        assert_eq!(s, 422, "{b}");
        assert_eq!(b["field"], field, "{b}");
    }
    let (s, b) = api.get(&reader, "/v1/policy").await;
    assert_eq!(s, 200);
    assert_eq!(b.as_array().unwrap().len(), 1, "{b}");
    assert_eq!(b[0]["cell"], "stripe.charge");
    assert_eq!(b[0]["rule"], "amount>=100000");
}

#[tokio::test]
async fn tools_over_http_answer_as_mcp_and_refuse_what_is_malformed() {
    let api = Api::start().await;
    let t = api.token(&[Scope::Submit]).await;
    let (status, tools) = api.get(&t, "/v1/tools").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = tools
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["stripe_charge", "idem_status"]);
    assert_eq!(tools[0]["cell"], "stripe.charge");
    assert_eq!(tools[0]["effectful"], true);
    assert!(tools[0]["input_schema"]["required"]
        .as_array()
        .unwrap()
        .contains(&json!("intent")));

    // The request itself wrong: a 4xx naming the field; an unknown tool: 404.
    let args = json!({"amount": 1200, "currency": "usd", "intent": "pay 1"});
    let (s, b) = api
        .post_json(&t, "/v1/tools/stripe_charge", json!({"arguments": args}))
        .await;
    assert_eq!((s, b["field"].as_str()), (422, Some("/scope")));
    let (s, _) = api
        .post_json(
            &t,
            "/v1/tools/stripe_teleport",
            json!({"scope": "s", "arguments": args}),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = api
        .post_json(
            &t,
            "/v1/tools/stripe_charge",
            json!({"scope": "s", "arguments": args, "extra": 1}),
        )
        .await;
    assert_eq!(s, 422);

    // What the model should read is a 200 with is_error, as MCP answers it; nothing is
    // enqueued for bad arguments.
    let (s, b) = api
        .post_json(
            &t,
            "/v1/tools/stripe_charge",
            json!({"scope": "s", "arguments": {"amount": "lots", "currency": "usd", "intent": "x"},
                   "wait_seconds": 0}),
        )
        .await;
    assert_eq!((s, b["is_error"].as_bool()), (200, Some(true)));
    assert_eq!(b["result"]["error"], "invalid_arguments");
    let (s, b) = api
        .post_json(
            &t,
            "/v1/tools/stripe_charge",
            json!({"scope": "s", "arguments": args, "wait_seconds": 0}),
        )
        .await;
    assert_eq!((s, b["is_error"].as_bool()), (200, Some(false)));
    let id = b["result"]["action_id"].as_str().unwrap().to_owned();
    assert_eq!(
        id,
        idem_core::ActionId::from_intent("s", "pay 1").to_string(),
        "the scope given is the scope of the id, as on every surface"
    );
    assert_eq!(api.stripe.sim.ledger().len(), 0, "no worker runs here");
}

/// Dead letters over HTTP: listed with their raw bytes and where they came from; replayed
/// once by an approver, audited with the token's name; refused (409, nothing changed) while
/// the bytes cannot become an action; and the replayed action is charged exactly once.
#[tokio::test]
async fn a_dead_letter_is_listed_and_replayed_once_over_http() {
    let api = Api::start().await;
    let pool = api.db.store.pool();
    let approver = tokens::create(pool, "ops-bob", &[Scope::Approve])
        .await
        .unwrap()
        .1;
    let reader = api.token(&[Scope::Read]).await;
    let id = uuid::Uuid::new_v4();
    let envelope = json!({"v": 1, "action_id": id, "cell": "stripe.charge",
        "args": {"amount": 1200, "currency": "usd"}, "ordering_key": id.to_string()});
    // Kept by a build that could not read it (as one reading only another envelope version
    // would have), and bytes no build can read.
    let mut conn = pool.acquire().await.unwrap();
    idem_store::queue::dead_letter(
        &mut conn,
        &[
            idem_store::DeadLetter {
                action_id: Some(id.into()),
                raw: envelope.to_string().into_bytes(),
                reason: "unknown envelope version 1 (this build reads 2)".into(),
                source: json!({"topic": "idem.actions", "partition": 3, "offset": 77}),
            },
            idem_store::DeadLetter {
                action_id: None,
                raw: vec![0xff, b'{'],
                reason: "not a JSON envelope".into(),
                source: json!({"outbox_seq": 9}),
            },
        ],
    )
    .await
    .unwrap();
    drop(conn);
    assert_eq!(api.get(&reader, "/v1/dead-letters").await.0, 403);
    let (s, list) = api.get(&approver, "/v1/dead-letters").await;
    assert_eq!(s, 200, "{list}");
    let list = list.as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "{list:?}");
    let garbage = list.iter().find(|l| l["raw_text"].is_null()).unwrap();
    assert_eq!(garbage["raw_base64"], "/3s=");
    assert_eq!(garbage["source"]["outbox_seq"], 9);
    let good = list.iter().find(|l| !l["raw_text"].is_null()).unwrap();
    assert_eq!(good["source"]["offset"], 77);
    assert_eq!(good["action_id"], id.to_string());
    let replay = |letter: &Value| format!("/v1/dead-letters/{}/replay", letter["id"]);

    let (s, b) = api
        .post_json(&approver, &replay(garbage), json!({"reason": "try it"}))
        .await;
    assert_eq!(s, 409, "{b}");
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("still cannot be read"),
        "{b}"
    );
    let (s, b) = api
        .post_json(&approver, &replay(good), json!({"reason": "  "}))
        .await;
    assert_eq!(s, 422, "{b}");
    let (s, _) = api
        .post_json(
            &approver,
            "/v1/dead-letters/999999/replay",
            json!({"reason": "x"}),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = api
        .post_json(
            &approver,
            "/v1/dead-letters/abc/replay",
            json!({"reason": "x"}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(api.stripe.sim.requests().len(), 0, "refusals send nothing");

    let (s, b) = api
        .post_json(
            &approver,
            &replay(good),
            json!({"reason": "workers upgraded"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["action_id"], id.to_string());
    assert_eq!(b["by"], "human:token:ops-bob");
    let (s, b) = api
        .post_json(&approver, &replay(good), json!({"reason": "again"}))
        .await;
    assert_eq!(s, 409, "{b}");
    assert!(
        b["error"].as_str().unwrap().contains("replayed already"),
        "{b}"
    );

    let worker = RunningWorker::start(&api.db.store, cells(&api.stripe));
    let submit = api.token(&[Scope::Read]).await;
    // The worker creates the action when the replayed bytes are delivered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while api.get(&submit, &format!("/v1/actions/{id}")).await.0 == 404 {
        assert!(tokio::time::Instant::now() < deadline, "never delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, b) = api
        .get(&submit, &format!("/v1/actions/{id}?wait=20s"))
        .await;
    worker.stop().await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["state"], "succeeded", "{b}");
    assert_eq!(api.stripe.sim.effects_for(&id.to_string()), 1);
    let (_, list) = api.get(&approver, "/v1/dead-letters").await;
    let good = list
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["action_id"] == id.to_string())
        .unwrap();
    assert_eq!(good["replayed_by"], "human:token:ops-bob");
    assert_eq!(good["replay_reason"], "workers upgraded");
}
