//! Several stores (`[[stores]]`): one (scope, intent) is one action on one store through
//! HTTP, MCP and the CLI; a store added while agents run makes no second action; a store
//! that is down holds back only its own actions; bad store lists are refused by name.
//! Effects are counted in the Stripe simulator's ledger.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use idem_api::{router, ApiState};
use idem_core::{ActionId, CellName};
use idem_services::{LocalPostgres, PostgresOptions};
use idem_sim::{SimServer, StripeSimConfig};
use idem_store::tokens::{self, Scope};
use idem_store::{inbox, EnqueueError, NewAction, Store, Stores};
use idem_testkit::harness::{spawn_idem, wait_settled};
use idem_testkit::{stripe_cells, RunningWorker, StripeFixture, TestDb, TEST_SECRET};
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::transport::TokioChildProcess;
use rmcp::ServiceExt;
use serde_json::{json, Value};

const IDEM: &str = env!("CARGO_BIN_EXE_idem");

/// An `idem.toml` naming `stores` in order (the first is the default), and its path.
fn config_file(stores: &[(&str, &str)], extra: &str) -> PathBuf {
    let mut text = String::new();
    for (name, url) in stores {
        text.push_str(&format!(
            "[[stores]]\nname = \"{name}\"\nurl = \"{url}\"\n\n"
        ));
    }
    text.push_str(extra);
    let path = std::env::temp_dir().join(format!("idem-stores-{}.toml", ActionId::random()));
    std::fs::write(&path, text).unwrap();
    path
}

fn charge_args(k: usize) -> Value {
    json!({"amount": 2000 + k, "currency": "usd", "customer": "cus_stores"})
}

fn named(scope: &str, intent: &str, args: Value) -> NewAction {
    NewAction::from_intent(scope, intent, CellName::new("stripe.charge").unwrap(), args)
}

/// On which of `stores` the action is, counting every one (exactly one must hold it).
async fn holders(stores: &[(&str, &Store)], id: ActionId) -> Vec<String> {
    let mut on = vec![];
    for (name, s) in stores {
        if inbox::get(s.pool(), id).await.unwrap().is_some() {
            on.push((*name).to_owned());
        }
    }
    on
}

/// `idem --config FILE ARGS` with the default store's URL as DATABASE_URL (the one a
/// database URL given besides `[[stores]]` may be).
fn idem_cli(config: &PathBuf, default_url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(IDEM)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("DATABASE_URL", default_url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// `idem enqueue` of a charge named (scope, intent), in a process of its own.
fn cli_enqueue(
    config: &PathBuf,
    default_url: &str,
    scope: &str,
    intent: &str,
    args: Value,
) -> std::process::Output {
    let args = args.to_string();
    let argv = [
        "enqueue",
        "--cell",
        "stripe.charge",
        "--intent-scope",
        scope,
    ];
    let rest = ["--intent", intent, "--args", &args];
    idem_cli(config, default_url, &[&argv[..], &rest[..]].concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_scope_and_intent_is_one_action_on_one_of_three_stores_through_http_mcp_and_the_cli() {
    let (a, b, c) = (
        TestDb::new().await,
        TestDb::new().await,
        TestDb::new().await,
    );
    let all = [("a", &a.store), ("b", &b.store), ("c", &c.store)];
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let config = config_file(&[("a", &a.url), ("b", &b.url), ("c", &c.url)], "");
    let stores = Stores::from_stores(
        all.iter()
            .map(|(n, s)| ((*n).to_owned(), (*s).clone()))
            .collect(),
        &BTreeMap::new(),
    )
    .unwrap();
    let app = router(
        ApiState::new(a.store.clone(), Arc::new(stripe_cells(&stripe, None))).with_stores(stores),
    );
    let server = SimServer::start(app, ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let (_, token) = tokens::create(a.store.pool(), "agent", &[Scope::Submit, Scope::Read])
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let api = server.base_url();

    let mut placed = BTreeMap::new();
    for k in 0..12 {
        let scope = format!("conversation-{k} Zürich");
        let intent = format!("pay invoice {k} — €{k}.00 ✓");
        let body = json!({"cell": "stripe.charge", "args": charge_args(k),
                          "intent_scope": scope, "intent": intent});
        let r = http
            .post(format!("{api}/v1/actions"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let r: Value = r.json().await.unwrap();
        let id = ActionId::from_intent(&scope, &intent);
        assert_eq!(r["action_id"], id.to_string());
        let store = r["store"].as_str().unwrap().to_owned();

        // The CLI, in a process of its own with the same [[stores]]: the same action.
        let out = cli_enqueue(&config, &a.url, &scope, &intent, charge_args(k));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (cli["action_id"].as_str(), cli["created"].as_bool()),
            (Some(id.to_string().as_str()), Some(false))
        );
        assert_eq!(cli["store"], store.as_str());
        if k == 0 {
            let out = cli_enqueue(&config, &a.url, &scope, &intent, charge_args(99));
            assert_eq!(out.status.code(), Some(3), "another amount is a conflict");
            let r = http
                .post(format!("{api}/v1/actions"))
                .bearer_auth(&token)
                .json(&json!({"cell": "stripe.charge", "args": charge_args(99),
                              "intent_scope": scope, "intent": intent}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 409);
        }
        placed.insert(id, store);
    }

    // MCP over stdio, one process per session, with the same [[stores]].
    for k in [0usize, 5, 11] {
        let scope = format!("conversation-{k} Zürich");
        let intent = format!("pay invoice {k} — €{k}.00 ✓");
        let mut cmd = tokio::process::Command::new(IDEM);
        cmd.arg("--config")
            .arg(&config)
            .args(["mcp", "--session", &scope, "--wait-secs", "0"])
            .args([
                "--stripe-base",
                &stripe.base_url(),
                "--stripe-secret",
                TEST_SECRET,
            ])
            .env("DATABASE_URL", &a.url)
            .env("RUST_LOG", "warn");
        let client = ClientConfig::default()
            .serve(TokioChildProcess::new(cmd).unwrap())
            .await
            .unwrap();
        let mut args = charge_args(k).as_object().unwrap().clone();
        args.insert("intent".into(), json!(intent));
        let r = client
            .call_tool(CallToolRequestParams::new("stripe_charge".to_owned()).with_arguments(args))
            .await
            .unwrap();
        let body = r.structured_content.unwrap();
        let id = ActionId::from_intent(&scope, &intent);
        assert_eq!(body["action_id"], id.to_string(), "{body}");
        assert_eq!(body["store"], placed[&id].as_str(), "{body}");
        assert_eq!(body["repeated_call"], true, "{body}");
        client.cancel().await.unwrap();
    }

    // Each action is on exactly the store named, and the twelve use all three.
    for (id, store) in &placed {
        assert_eq!(
            holders(&all, *id).await,
            std::slice::from_ref(store),
            "{id}"
        );
    }
    let used: BTreeSet<&String> = placed.values().collect();
    assert_eq!(used.len(), 3, "{placed:?}");

    // One `idem worker` process over the three stores settles them all, one charge each.
    let _worker = spawn_idem(
        IDEM,
        &[
            "--config",
            config.to_str().unwrap(),
            "worker",
            "--stripe-base",
            &stripe.base_url(),
            "--stripe-secret",
            TEST_SECRET,
            "--poll-interval-ms",
            "50",
        ],
        &[("DATABASE_URL", &a.url)],
    );
    for (id, store) in &placed {
        let s = all.iter().find(|(n, _)| n == store).unwrap().1;
        wait_settled(s, &[*id], Duration::from_secs(30)).await;
        assert_eq!(stripe.sim.effects_for(&id.to_string()), 1, "{id}");
        // Status finds it wherever it is, and says where.
        let r: Value = http
            .get(format!("{api}/v1/actions/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            (r["state"].as_str(), r["store"].as_str()),
            (Some("succeeded"), Some(store.as_str()))
        );
    }
    assert_eq!(stripe.sim.ledger().len(), placed.len());
    let _ = std::fs::remove_file(config);
}

#[tokio::test]
async fn a_store_added_while_agents_run_makes_no_second_action() {
    let (a, b, c) = (
        TestDb::new().await,
        TestDb::new().await,
        TestDb::new().await,
    );
    let all = [("a", &a.store), ("b", &b.store), ("c", &c.store)];
    let list = |names: &[&str]| {
        Stores::from_stores(
            names
                .iter()
                .map(|n| {
                    (
                        (*n).to_owned(),
                        all.iter().find(|(m, _)| m == n).unwrap().1.clone(),
                    )
                })
                .collect(),
            &BTreeMap::new(),
        )
        .unwrap()
    };
    let enqueue = |s: &Stores, scope: String, k: usize| {
        let s = s.clone();
        async move {
            let a = named(&scope, "charge", charge_args(k));
            let (store, e) = s.enqueue(&a, None).await.unwrap();
            (store.to_owned(), e.created, a.action_id)
        }
    };

    // One store, as every deployment starts: nothing is recorded.
    let one = list(&["a"]);
    for k in 0..10 {
        assert_eq!(enqueue(&one, format!("old-{k}"), k).await.0, "a");
    }
    // A second store: the scopes already on the default stay there; new ones spread.
    let two = list(&["a", "b"]);
    let mut mid = BTreeMap::new();
    for k in 0..10 {
        let (store, created, _) = enqueue(&two, format!("old-{k}"), k).await;
        assert_eq!((store.as_str(), created), ("a", false), "old-{k} moved");
    }
    for k in 0..20 {
        let (store, created, _) = enqueue(&two, format!("mid-{k}"), k).await;
        assert!(created);
        mid.insert(k, store);
    }
    assert!(mid.values().any(|s| s == "b"), "{mid:?}");

    // A third store is being rolled out: processes that list it closed to new scopes
    // (the first rollout) and processes that have it open place the same new scopes at
    // once — each scope still gets one action on one store.
    let (two_old, three) = (
        list(&["a", "b", "c"]).closed_to_new_scopes(&["c"]).unwrap(),
        list(&["a", "b", "c"]),
    );
    for k in 0..20 {
        let (x, y) = tokio::join!(
            enqueue(&two_old, format!("new-{k}"), k),
            enqueue(&three, format!("new-{k}"), k)
        );
        assert_eq!(x.0, y.0, "new-{k} placed on two stores");
        assert!(x.1 != y.1, "new-{k}: exactly one of the two created it");
        assert_eq!(holders(&all, x.2).await, std::slice::from_ref(&x.0));
    }
    // Everything placed before is found where it was, by a process that knew only three.
    let fresh = list(&["a", "b", "c"]);
    for k in 0..20 {
        let (store, created, _) = enqueue(&fresh, format!("mid-{k}"), k).await;
        assert_eq!((&store, created), (&mid[&k], false), "mid-{k} moved");
    }
    for k in 0..10 {
        let (store, created, _) = enqueue(&fresh, format!("old-{k}"), k).await;
        assert_eq!((store.as_str(), created), ("a", false));
    }
    // And scopes first seen now use the new store too.
    let mut late = BTreeMap::new();
    for k in 0..30 {
        late.insert(k, enqueue(&fresh, format!("late-{k}"), k).await.0);
    }
    let on_c = late.iter().find(|(_, s)| *s == "c").map(|(k, _)| *k);
    let on_c = on_c.unwrap_or_else(|| panic!("no late scope on c: {late:?}"));
    // A process whose list lacks c refuses a scope placed there, naming c: never a second
    // action on a store it knows.
    let stale = list(&["a", "b"]);
    let a = named(&format!("late-{on_c}"), "charge", charge_args(on_c));
    let e = stale.enqueue(&a, None).await.unwrap_err().to_string();
    assert!(e.contains("on store \"c\""), "{e}");
    assert_eq!(holders(&all, a.action_id).await, ["c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_is_down_holds_back_only_its_own_actions() {
    let (a, b) = (TestDb::new().await, TestDb::new().await);
    // Store c on a PostgreSQL of its own, so that it alone can be taken down.
    let dir = idem_services::run_dir("store-down").unwrap();
    idem_services::remove_when_process_exits(&dir);
    let pg = Arc::new(
        LocalPostgres::start(
            &dir.join("c"),
            &PostgresOptions {
                fast_unsafe: true,
                ..PostgresOptions::default()
            },
        )
        .unwrap(),
    );
    let c = Store::connect(&pg.url(), 8).await.unwrap();
    c.migrate().await.unwrap();
    let stores = Stores::from_stores(
        vec![
            ("a".into(), a.store.clone()),
            ("b".into(), b.store.clone()),
            ("c".into(), c.clone()),
        ],
        &BTreeMap::from([("tenant-c/".to_owned(), "c".to_owned())]),
    )
    .unwrap();
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let workers: Vec<RunningWorker> = [&a.store, &b.store, &c]
        .into_iter()
        .map(|s| RunningWorker::start(s, stripe_cells(&stripe, None)))
        .collect();
    // A placement rule pins tenant-c/ to store c; the other scopes go to a or b.
    let first = named("tenant-c/conv-1", "charge 1", charge_args(1));
    assert_eq!(stores.enqueue(&first, None).await.unwrap().0, "c");
    wait_settled(&c, &[first.action_id], Duration::from_secs(20)).await;

    // Other tenants' conversations, placed (by hash) before the outage.
    let mut placed = vec![];
    for k in 0..15 {
        let scope = format!("tenant-x/conv-{k}");
        let act = named(&scope, "charge", charge_args(10 + k));
        let (store, _) = stores.enqueue(&act, None).await.unwrap();
        placed.push((scope, store.to_owned()));
    }
    let down = pg.clone();
    let outage =
        tokio::task::spawn_blocking(move || down.crash_and_restart(Duration::from_secs(6)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // While c is down: c's tenant cannot enqueue (an error, nothing written elsewhere)...
    let held = named("tenant-c/conv-2", "charge 2", charge_args(2));
    match stores.enqueue(&held, None).await {
        Err(EnqueueError::Db(_)) => {}
        other => panic!("an enqueue to a store that is down must fail, got {other:?}"),
    }
    // ...and everyone else's actions are taken and settled on a and b.
    let mut others = vec![];
    for (k, (scope, home)) in placed.iter().enumerate().filter(|(_, (_, h))| h != "c") {
        let act = named(scope, "charge again", charge_args(30 + k));
        let (store, _) = stores.enqueue(&act, None).await.unwrap();
        assert_eq!(store, home);
        others.push((store.to_owned(), act.action_id));
    }
    assert!(others.len() >= 5, "{placed:?}");
    for (store, id) in &others {
        wait_settled(stores.get(store).unwrap(), &[*id], Duration::from_secs(5)).await;
        assert_eq!(stripe.sim.effects_for(&id.to_string()), 1);
    }
    assert!(
        !outage.is_finished(),
        "the others settled while c was still down"
    );
    outage.await.unwrap().unwrap();
    // Back up: c's tenant enqueues again (the same action, once) and it settles.
    let (store, _) = loop {
        match stores.enqueue(&held, None).await {
            Ok(r) => break r,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert_eq!(store, "c");
    wait_settled(&c, &[held.action_id], Duration::from_secs(30)).await;
    assert_eq!(stripe.sim.effects_for(&held.action_id.to_string()), 1);
    assert_eq!(
        holders(&[("a", &a.store), ("b", &b.store)], held.action_id).await,
        Vec::<String>::new()
    );
    for w in workers {
        w.stop().await;
    }
}

#[tokio::test]
async fn bad_store_lists_are_refused_by_name_and_config_never_shows_a_password() {
    let a = TestDb::new().await;
    let check = |config: &PathBuf, args: &[&str]| {
        let out = idem_cli(config, &a.url, args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // Two stores, one database.
    let f = config_file(&[("a", &a.url), ("b", &a.url)], "");
    let (ok, out) = check(&f, &["config"]);
    assert!(
        !ok && out.contains("stores \"a\" and \"b\" are one database"),
        "{out}"
    );
    // A placement to a store that is not there.
    let f = config_file(
        &[("a", &a.url)],
        "[placement.prefixes]\n\"tenant-7/\" = \"z\"\n",
    );
    let (ok, out) = check(&f, &["config"]);
    assert!(!ok && out.contains("no store is named \"z\""), "{out}");
    // A store that does not answer at start is named.
    let port = idem_services::free_port().unwrap();
    let f = config_file(
        &[
            ("a", &a.url),
            (
                "b",
                &format!("postgres://idem:s3cret@127.0.0.1:{port}/idem"),
            ),
        ],
        "",
    );
    let (ok, out) = check(&f, &["status", &ActionId::random().to_string()]);
    assert!(!ok && out.contains("store \"b\""), "{out}");
    assert!(!out.contains("s3cret"), "{out}");
    // `idem config` lists the stores, passwords redacted.
    let (ok, out) = check(&f, &["config"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("name = \"b\"") && out.contains("idem:<redacted>@127.0.0.1"),
        "{out}"
    );
    assert!(!out.contains("s3cret"), "{out}");
    // A database URL besides [[stores]] that is not the default store's is refused.
    let out = std::process::Command::new(IDEM)
        .arg("--config")
        .arg(&f)
        .args(["status", &ActionId::random().to_string()])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/other")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("both [[stores]] and a database URL"),
        "{text}"
    );
}

/// Each store's database enforces the approval policy itself (IDM04), so a rule set once
/// reaches every store, and an action placed on any of them is held.
#[tokio::test]
async fn a_policy_set_once_holds_actions_on_every_store() {
    let (a, b) = (TestDb::new().await, TestDb::new().await);
    let config = config_file(&[("a", &a.url), ("b", &b.url)], "");
    let out = idem_cli(
        &config,
        &a.url,
        &[
            "policy",
            "set",
            "stripe.charge",
            "always",
            "--as",
            "alice",
            "--reason",
            "review all",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for s in [&a.store, &b.store] {
        let rules = idem_store::policy::list(s.pool()).await.unwrap();
        assert_eq!(rules.len(), 1, "{rules:?}");
        assert_eq!(
            (rules[0].cell.as_str(), rules[0].rule.as_str()),
            ("stripe.charge", "always")
        );
    }
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let stores = Stores::from_stores(
        vec![("a".into(), a.store.clone()), ("b".into(), b.store.clone())],
        &BTreeMap::new(),
    )
    .unwrap();
    let workers: Vec<RunningWorker> = [&a.store, &b.store]
        .into_iter()
        .map(|s| RunningWorker::start(s, stripe_cells(&stripe, None)))
        .collect();
    let mut on = BTreeSet::new();
    for k in 0..8 {
        let act = named(&format!("held-{k}"), "charge", charge_args(k));
        let (store, _) = stores.enqueue(&act, None).await.unwrap();
        on.insert(store.to_owned());
        let home = stores.get(store).unwrap();
        idem_testkit::harness::wait_for(
            home,
            act.action_id,
            idem_core::State::AwaitingApproval,
            Duration::from_secs(10),
        )
        .await;
    }
    assert_eq!(on.len(), 2, "both stores held some: {on:?}");
    assert!(stripe.sim.ledger().is_empty());
    for w in workers {
        w.stop().await;
    }
}

/// The Kafka path over two stores: one `idem relay` process publishes each store's outbox
/// to that store's topics, one `idem worker --transport kafka` process consumes them in a
/// consumer group per store and settles each action on its home store — one charge each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_kafka_path_over_two_stores_settles_each_action_on_its_home_store() {
    let (a, b) = (TestDb::new().await, TestDb::new().await);
    let config = config_file(&[("a", &a.url), ("b", &b.url)], "");
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let bootstrap = idem_testkit::kafka_bootstrap();
    let topic = format!("idem.test.{}", ActionId::random());
    let conf = config.to_str().unwrap().to_owned();
    let env = [
        ("DATABASE_URL", a.url.as_str()),
        ("KAFKA_BOOTSTRAP", bootstrap.as_str()),
    ];
    let _relay = spawn_idem(
        IDEM,
        &[
            "--config",
            &conf,
            "relay",
            "--topic",
            &topic,
            "--partitions",
            "3",
            "--poll-interval-ms",
            "50",
        ],
        &env,
    );
    let group = format!("g-{}", ActionId::random());
    let _worker = spawn_idem(
        IDEM,
        &[
            "--config",
            &conf,
            "worker",
            "--transport",
            "kafka",
            "--group",
            &group,
            "--topic",
            &topic,
            "--partitions",
            "3",
            "--stripe-base",
            &stripe.base_url(),
            "--stripe-secret",
            TEST_SECRET,
            "--poll-interval-ms",
            "50",
        ],
        &env,
    );
    let stores = Stores::from_stores(
        vec![("a".into(), a.store.clone()), ("b".into(), b.store.clone())],
        &BTreeMap::new(),
    )
    .unwrap();
    let mut placed = vec![];
    for k in 0..16 {
        let act = named(&format!("kafka-conv-{k}"), "charge", charge_args(k));
        let (store, _) = stores.enqueue(&act, None).await.unwrap();
        placed.push((store.to_owned(), act.action_id));
    }
    let on: BTreeSet<&str> = placed.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(on.len(), 2, "{placed:?}");
    for (store, id) in &placed {
        wait_settled(stores.get(store).unwrap(), &[*id], Duration::from_secs(60)).await;
        let row = inbox::get(stores.get(store).unwrap().pool(), *id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.state, idem_core::State::Succeeded, "{id}");
        assert_eq!(stripe.sim.effects_for(&id.to_string()), 1, "{id}");
    }
    for s in [&a.store, &b.store] {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM idem.outbox")
            .fetch_one(s.pool())
            .await
            .unwrap();
        assert_eq!(n, 0, "each store's relay drained its outbox");
    }
    assert_eq!(stripe.sim.ledger().len(), placed.len());

    // Every message names its home store; one that names another store than the group's
    // (two stores' topics shared by mistake) goes dead with its bytes: no action, no charge.
    let stray = idem_core::Envelope {
        v: idem_core::envelope::ENVELOPE_VERSION,
        action_id: ActionId::random(),
        cell: "stripe.charge".into(),
        args: charge_args(99),
        ordering_key: "stray".into(),
    };
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let payload = stray.encode();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&format!("{topic}.b"))
                .key("stray")
                .payload(&payload)
                .headers(
                    rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                        key: idem_kafka::headers::STORE,
                        value: Some("a"),
                    }),
                ),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let reason = loop {
        let letters = idem_store::explore::dead_letters(b.store.pool(), 10)
            .await
            .unwrap();
        if let Some(l) = letters.iter().find(|l| l.raw == payload) {
            break l.reason.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stray message never went dead"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        reason.contains("for store \"a\", consumed by store \"b\""),
        "{reason}"
    );
    assert_eq!(
        holders(&[("a", &a.store), ("b", &b.store)], stray.action_id).await,
        Vec::<String>::new()
    );
    assert_eq!(stripe.sim.effects_for(&stray.action_id.to_string()), 0);
    // And the relay names the store on what it publishes (checked on store b's topic).
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("peek-{}", ActionId::random()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    rdkafka::consumer::Consumer::subscribe(&consumer, &[&format!("{topic}.b")]).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let named_b = loop {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
            use rdkafka::message::{Headers, Message};
            if m.payload() != Some(&payload[..]) {
                let h = m.headers().unwrap();
                break h
                    .iter()
                    .find(|h| h.key == idem_kafka::headers::STORE)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned());
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no relayed message on b's topic"
        );
    };
    assert_eq!(named_b.as_deref(), Some("b"));
}

/// A person's side over three stores: `/v1/approvals`, `idem approvals list` and the
/// console list every store's waiting actions and name each one's store; a decision on any
/// store reaches its home (one charge each); the explorer shows the store; with a store
/// down the others are still listed, and the missing one is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approvals_the_console_and_the_explorer_work_across_stores() {
    let (a, b) = (TestDb::new().await, TestDb::new().await);
    let dir = idem_services::run_dir("stores-people").unwrap();
    idem_services::remove_when_process_exits(&dir);
    let pg = Arc::new(
        LocalPostgres::start(
            &dir.join("c"),
            &PostgresOptions {
                fast_unsafe: true,
                ..PostgresOptions::default()
            },
        )
        .unwrap(),
    );
    let c = Store::connect(&pg.url(), 8).await.unwrap();
    c.migrate().await.unwrap();
    let rules = "[placement.prefixes]\n\"tenant-c/\" = \"c\"\n";
    let config = config_file(&[("a", &a.url), ("b", &b.url), ("c", &pg.url())], rules);
    let stores = Stores::from_stores(
        vec![
            ("a".into(), a.store.clone()),
            ("b".into(), b.store.clone()),
            ("c".into(), c.clone()),
        ],
        &BTreeMap::from([("tenant-c/".to_owned(), "c".to_owned())]),
    )
    .unwrap();
    let out = idem_cli(
        &config,
        &a.url,
        &[
            "policy",
            "set",
            "stripe.charge",
            "always",
            "--as",
            "alice",
            "--reason",
            "review all",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let workers: Vec<RunningWorker> = [&a.store, &b.store, &c]
        .into_iter()
        .map(|s| RunningWorker::start(s, stripe_cells(&stripe, None)))
        .collect();
    let mut homes = BTreeMap::new();
    for k in 0..9 {
        let scope = if k < 2 {
            format!("tenant-c/conv-{k}")
        } else {
            format!("conv-{k}")
        };
        let act = named(&scope, "charge", charge_args(k));
        let (store, _) = stores.enqueue(&act, None).await.unwrap();
        homes.insert(act.action_id.to_string(), store.to_owned());
    }
    for (id, store) in &homes {
        idem_testkit::harness::wait_for(
            stores.get(store).unwrap(),
            id.parse().unwrap(),
            idem_core::State::AwaitingApproval,
            Duration::from_secs(10),
        )
        .await;
    }
    let on: BTreeSet<&String> = homes.values().collect();
    assert_eq!(on.len(), 3, "all three stores hold some: {homes:?}");

    let app = router(
        ApiState::new(a.store.clone(), Arc::new(stripe_cells(&stripe, None))).with_stores(stores),
    );
    let server = SimServer::start(app, ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let (_, token) = tokens::create(a.store.pool(), "approver", &[Scope::Approve, Scope::Read])
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let api = server.base_url();
    let listed = |r: Value| -> BTreeMap<String, (String, String)> {
        r.as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (
                    w["action_id"].as_str().unwrap().to_owned(),
                    (
                        w["store"].as_str().unwrap().to_owned(),
                        w["fingerprint"].as_str().unwrap().to_owned(),
                    ),
                )
            })
            .collect()
    };
    // The HTTP list: every store's actions, each with its store.
    let r = http
        .get(format!("{api}/v1/approvals"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get(idem_api::UNAVAILABLE_STORES).is_none());
    let waiting = listed(r.json().await.unwrap());
    let stores_of: BTreeMap<String, String> = waiting
        .iter()
        .map(|(id, (s, _))| (id.clone(), s.clone()))
        .collect();
    assert_eq!(stores_of, homes);
    // The CLI list, through the same configuration.
    let out = idem_cli(&config, &a.url, &["approvals", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli = listed(serde_json::from_slice(&out.stdout).unwrap());
    assert_eq!(cli, waiting);
    // The console page names each action's store.
    let console = |path: String| {
        let (http, token) = (http.clone(), token.clone());
        async move {
            let r = http
                .get(path)
                .header("cookie", format!("idem_console={token}"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, page) = console(format!("{api}/console")).await;
    assert_eq!(status, 200, "{page}");
    for (id, store) in &homes {
        let at = page
            .find(&format!("id=\"action-{id}\""))
            .unwrap_or_else(|| panic!("{id} not on the console"));
        let item = &page[at..];
        let item = &item[..item[1..]
            .find("<section")
            .map(|e| e + 1)
            .unwrap_or(item.len())];
        assert!(
            item.contains(&format!("store <code class=store>{store}</code>")),
            "{item}"
        );
    }

    // Decide one on b over HTTP and one on c through the CLI: each settles on its home.
    let pick = |s: &str| {
        homes
            .iter()
            .find(|(_, h)| *h == s)
            .map(|(id, _)| id.clone())
            .unwrap()
    };
    let (on_b, on_c) = (pick("b"), pick("c"));
    let r = http
        .post(format!("{api}/v1/approvals/{on_b}/approve"))
        .bearer_auth(&token)
        .json(&json!({"fingerprint": waiting[&on_b].1, "reason": "ok"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let out = idem_cli(
        &config,
        &a.url,
        &[
            "approvals",
            "approve",
            &on_c,
            "--as",
            "alice",
            "--fingerprint",
            &waiting[&on_c].1,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_settled(&b.store, &[on_b.parse().unwrap()], Duration::from_secs(20)).await;
    wait_settled(&c, &[on_c.parse().unwrap()], Duration::from_secs(20)).await;
    assert_eq!(stripe.sim.effects_for(&on_b), 1);
    assert_eq!(stripe.sim.effects_for(&on_c), 1);
    assert_eq!(
        stripe.sim.ledger().len(),
        2,
        "only the two approved were charged"
    );
    // The explorer finds them all, with their stores, and shows the home on the detail.
    let (status, found) = console(format!("{api}/console/explore?cell=stripe.charge")).await;
    assert_eq!(status, 200, "{found}");
    for (id, store) in &homes {
        assert!(
            found.contains(&format!(
                "class=found>{id}</a></td><td class=store>{store}</td>"
            )),
            "{id} on {store} not in {found}"
        );
    }
    let (status, detail) = console(format!("{api}/console/explore/{on_c}")).await;
    assert_eq!(status, 200, "{detail}");
    assert!(detail.contains("<code id=store>c</code>"), "{detail}");

    // Store c goes down: a and b are still listed, and c is named as missing.
    pg.kill().unwrap();
    let r = http
        .get(format!("{api}/v1/approvals"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[idem_api::UNAVAILABLE_STORES], "c");
    let left = listed(r.json().await.unwrap());
    let expect: BTreeSet<String> = homes
        .iter()
        .filter(|(id, s)| *s != "c" && **id != on_b)
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(left.keys().cloned().collect::<BTreeSet<_>>(), expect);
    let (status, page) = console(format!("{api}/console")).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("id=stores-down"), "{page}");
    for w in workers {
        w.stop().await;
    }
}
