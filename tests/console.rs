//! The approver console in a real browser: Debian's Chromium, headless, driven over
//! WebDriver (chromedriver + the `fantoccini` client), against `idem serve`'s router, real
//! PostgreSQL, a real worker and the Stripe simulator's ledger. The pending items are
//! checked in screenshots (their background colour), not only in the DOM.
//!
//! Needs `chromium` and `chromedriver` (Debian: `apt-get install chromium chromium-driver`;
//! `.ci/run` installs them), or CHROMIUM / CHROMEDRIVER naming the binaries.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use idem_api::{router, ApiState};
use idem_sim::{SimServer, StripeSimConfig};
use idem_store::tokens::{self, Scope};
use idem_testkit::{stripe_cells, RunningWorker, StripeFixture, TestDb};
use serde_json::json;

/// The approval items' background (#ffd600 in the console's style sheet).
const APPROVAL_RGB: [u8; 3] = [0xff, 0xd6, 0x00];

fn binary(env: &str, default: &str) -> String {
    let path = std::env::var(env).unwrap_or_else(|_| default.to_owned());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} not found: the console test needs Chromium and ChromeDriver \
         (Debian: apt-get install chromium chromium-driver; .ci/run installs them), \
         or {env} naming the binary"
    );
    path
}

/// Pixels of `rgb` (±2 per channel) in a PNG screenshot.
fn count_colour(png_bytes: &[u8], rgb: [u8; 3]) -> usize {
    let mut reader = png::Decoder::new(Cursor::new(png_bytes))
        .read_info()
        .expect("a PNG screenshot");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let frame = reader.next_frame(&mut buf).expect("a frame");
    let channels = frame.color_type.samples();
    buf[..frame.buffer_size()]
        .chunks(channels)
        .filter(|p| p.len() >= 3 && (0..3).all(|i| p[i].abs_diff(rgb[i]) <= 2))
        .count()
}

/// The chromedriver process, killed when dropped.
struct Driver(#[allow(dead_code)] tokio::process::Child);

impl Driver {
    async fn start() -> (Self, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(binary("CHROMEDRIVER", "/usr/bin/chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return (Self(child), url);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not listen on {port}");
    }
}

/// Wait until the page's flash says `want` (the page a form was sent from may still show
/// an older one).
async fn wait_flash(browser: &fantoccini::Client, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = match browser.find(Locator::Id("flash")).await {
            Ok(f) => f.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if text.contains(want) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "flash: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Keep a screenshot beside the test binaries (`$CARGO_TARGET_TMPDIR/NAME.png`) to look at.
async fn save_screenshot(browser: &fantoccini::Client, name: &str) {
    std::fs::write(
        format!("{}/{name}.png", env!("CARGO_TARGET_TMPDIR")),
        browser.screenshot().await.unwrap(),
    )
    .ok();
}

/// Wait until `n` actions await approval.
async fn wait_held(pool: &sqlx::PgPool, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while idem_store::decisions::waiting(pool, idem_core::State::AwaitingApproval, 50)
        .await
        .unwrap()
        .len()
        < n
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} actions wait for approval"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Type `token` into the sign-in form on the page and submit it.
async fn sign_in(browser: &fantoccini::Client, token: &str) {
    browser
        .find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    browser
        .find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// A headless Chromium session through chromedriver, with a profile directory of its own
/// (remove it when done).
async fn open_browser() -> (Driver, fantoccini::Client, std::path::PathBuf) {
    let (driver, driver_url) = Driver::start().await;
    let profile = std::env::temp_dir().join(format!("idem-chromium-{}", uuid::Uuid::new_v4()));
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": binary("CHROMIUM", "/usr/bin/chromium"),
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-dev-shm-usage", "--window-size=1280,1600",
                     format!("--user-data-dir={}", profile.display())]
        }
    });
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps.as_object().unwrap().clone())
        .connect(&driver_url)
        .await
        .expect("a Chromium session");
    (driver, browser, profile)
}

/// `idem serve`'s router with charges of 500.00 and more held for a person, a worker, and
/// a submit token and an approve token (named `approver`).
struct Console {
    db: TestDb,
    stripe: StripeFixture,
    _server: SimServer,
    worker: RunningWorker,
    base: String,
    submit: String,
    approver: String,
}

impl Console {
    async fn start(approver: &str) -> Self {
        let db = TestDb::new().await;
        let stripe = StripeFixture::start(StripeSimConfig::default()).await;
        let app = router(ApiState::new(
            db.store.clone(),
            Arc::new(stripe_cells(&stripe, Some(50_000))),
        ));
        let server = SimServer::start(app, ([127, 0, 0, 1], 0).into())
            .await
            .unwrap();
        let pool = db.store.pool();
        let submit = tokens::create(pool, "agent", &[Scope::Submit])
            .await
            .unwrap()
            .1;
        let approver = tokens::create(pool, approver, &[Scope::Approve])
            .await
            .unwrap()
            .1;
        let worker = RunningWorker::start(&db.store, stripe_cells(&stripe, Some(50_000)));
        Self {
            base: server.base_url(),
            _server: server,
            worker,
            db,
            stripe,
            submit,
            approver,
        }
    }
}

#[tokio::test]
async fn a_person_approves_one_charge_and_rejects_another_in_the_browser() {
    let c = Console::start("ops-alice").await;
    let (base, pool, submit, approver) = (&c.base, c.db.store.pool(), &c.submit, &c.approver);

    // Two big charges, submitted with curl's equivalent; both wait for a person.
    let http = reqwest::Client::new();
    let (keep, drop_) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    for (id, amount) in [(keep, 60_000), (drop_, 75_000)] {
        let r = http
            .post(format!("{base}/v1/actions"))
            .bearer_auth(submit)
            .json(&json!({"cell": "stripe.charge", "action_id": id,
                          "args": {"amount": amount, "currency": "usd", "description": "console test"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
    // And one whose card is declined: it fails, with no effect.
    let declined = uuid::Uuid::new_v4();
    let r = http
        .post(format!("{base}/v1/actions"))
        .bearer_auth(submit)
        .json(&json!({"cell": "stripe.charge", "action_id": declined,
                      "args": {"amount": 900, "currency": "usd", "payment_method": "pm_card_chargeDeclined"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let failed = idem_store::await_settled(pool, declined.into(), Duration::from_secs(10))
        .await
        .unwrap()
        .expect("settled");
    assert_eq!(failed.state, idem_core::State::Failed);
    wait_held(pool, 2).await;

    let (_driver, browser, profile) = open_browser().await;

    // Signed out: the console asks for a token; a token without the approve scope is refused.
    browser.goto(&format!("{base}/console")).await.unwrap();
    sign_in(&browser, submit).await;
    // Wait for the answer page (the click returns before the navigation ends).
    let refused = browser
        .wait()
        .for_element(Locator::XPath("//p[contains(., 'was refused')]"))
        .await
        .expect("the refusal is shown");
    assert!(refused.text().await.unwrap().contains("approve scope"));
    sign_in(&browser, approver).await;

    // Both pending items are on the page, with arguments and the card, and on screen.
    let item = browser
        .wait()
        .for_element(Locator::Id(&format!("action-{keep}")))
        .await
        .unwrap();
    let text = item.text().await.unwrap();
    assert!(
        text.contains("60000") && text.contains("console test"),
        "{text}"
    );
    // What a person reads first: the sentence, money in major units with the currency.
    let summary = item
        .find(Locator::Css("p.summary"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(summary, "Charge $600.00 USD — console test");
    assert!(text.contains("The approval expires at"), "{text}");
    assert!(text.contains("by token:agent"), "who submitted it: {text}");
    assert!(
        text.contains("Idempotency-Key"),
        "the card's explanation: {text}"
    );
    assert!(text.contains("No request has been sent"), "{text}");
    let item_shot = item.screenshot().await.unwrap();
    assert!(
        count_colour(&item_shot, APPROVAL_RGB) > 1000,
        "the pending item is drawn"
    );
    let page = browser.source().await.unwrap();
    assert!(page.contains(&format!("action-{drop_}")));
    let before = count_colour(&browser.screenshot().await.unwrap(), APPROVAL_RGB);
    assert!(before > 0);
    save_screenshot(&browser, "console-before").await;

    // Approve the first with a reason.
    let form = item
        .find(Locator::Css("form[action$='/approve']"))
        .await
        .unwrap();
    form.find(Locator::Css("input[name=reason]"))
        .await
        .unwrap()
        .send_keys("known customer")
        .await
        .unwrap();
    form.find(Locator::Css("button.approve"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The confirmation repeats what will happen; only its button decides.
    let confirmation = browser
        .wait()
        .for_element(Locator::Id("confirmation"))
        .await
        .unwrap();
    let said = confirmation.text().await.unwrap();
    assert!(
        said.contains("Charge $600.00 USD — console test") && said.contains("held because"),
        "{said}"
    );
    save_screenshot(&browser, "console-confirm").await;
    browser
        .find(Locator::Id("confirm"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let flash = browser
        .wait()
        .for_element(Locator::Id("flash"))
        .await
        .unwrap();
    assert!(flash.text().await.unwrap().contains("approved"));
    assert!(
        browser
            .find(Locator::Id(&format!("action-{keep}")))
            .await
            .is_err(),
        "gone from the page"
    );

    // Reject the second; nothing is left to decide, on the page or on the screen.
    browser
        .find(Locator::Css(&format!("#action-{drop_} button.reject")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let confirmation = browser
        .wait()
        .for_element(Locator::Id("confirm-summary"))
        .await
        .unwrap();
    assert_eq!(
        confirmation.text().await.unwrap(),
        "Charge $750.00 USD — console test"
    );
    browser
        .find(Locator::Id("confirm"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .for_element(Locator::Id("no-approvals"))
        .await
        .unwrap();
    let after_shot = browser.screenshot().await.unwrap();
    std::fs::write(
        env!("CARGO_TARGET_TMPDIR").to_owned() + "/console-after.png",
        &after_shot,
    )
    .ok();
    assert_eq!(
        count_colour(&after_shot, APPROVAL_RGB),
        0,
        "no pending item drawn"
    );
    // The declined charge is listed as failed; a person sends it again with a reason.
    let form = browser
        .find(Locator::Css(&format!(
            "#action-{declined} form[action$='/resend']"
        )))
        .await
        .expect("a failed action offers Send again");
    form.find(Locator::Css("input[name=reason]"))
        .await
        .unwrap()
        .send_keys("customer updated the card")
        .await
        .unwrap();
    form.find(Locator::Css("button.resend"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The page it was sent from shows the rejection's flash: wait for the new one.
    wait_flash(&browser, "sent again").await;

    // The explorer: an agent's charge found by its named intent, and its history read.
    let r = http
        .post(format!("{base}/v1/actions"))
        .bearer_auth(submit)
        .json(&json!({"cell": "stripe.charge", "intent_scope": "conversation-7", "intent": "invoice-42-payment",
                      "args": {"amount": 4200, "currency": "usd", "customer": "cus_42"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let by_intent: serde_json::Value = r.json().await.unwrap();
    let by_intent = by_intent["action_id"].as_str().unwrap().to_owned();
    idem_store::await_settled(pool, by_intent.parse().unwrap(), Duration::from_secs(20))
        .await
        .unwrap()
        .expect("settled");
    browser
        .find(Locator::Id("explore"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    for (field, value) in [
        ("q-scope", "conversation-7"),
        ("q-intent", "invoice-42-payment"),
    ] {
        browser
            .wait()
            .for_element(Locator::Id(field))
            .await
            .unwrap()
            .send_keys(value)
            .await
            .unwrap();
    }
    browser
        .find(Locator::Id("find"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The unfiltered page lists results too: wait for the search's own page.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !browser
        .current_url()
        .await
        .unwrap()
        .as_str()
        .contains("intent=invoice-42-payment")
    {
        assert!(tokio::time::Instant::now() < deadline, "the search ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let results = browser.find(Locator::Id("results")).await.unwrap();
    let listed = results.text().await.unwrap();
    assert!(
        listed.contains(&by_intent) && listed.contains("Charge $42.00 USD to cus_42"),
        "{listed}"
    );
    assert_eq!(
        results
            .find_all(Locator::Css("a.found"))
            .await
            .unwrap()
            .len(),
        1
    );
    results
        .find(Locator::Css("a.found"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let detail = browser
        .wait()
        .for_element(Locator::Id("detail"))
        .await
        .unwrap();
    assert_eq!(
        browser
            .find(Locator::Id("state"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "succeeded"
    );
    let history = browser
        .find(Locator::Id("transitions"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for step in ["received executing start", "executing succeeded succeeded"] {
        assert!(history.contains(step), "transition {step:?} in {history}");
    }
    let attempts = browser
        .find(Locator::Id("attempts"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        attempts.contains(&format!("idem-{by_intent}-g0")) && attempts.contains("succeeded"),
        "{attempts}"
    );
    let receipt = browser
        .find(Locator::Id("receipt"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(receipt.contains("pi_"), "{receipt}");
    assert!(detail.text().await.unwrap().contains("conversation-7"));
    save_screenshot(&browser, "console-explore").await;

    // Dead letters keep their raw bytes and where they came from.
    sqlx::query(
        "INSERT INTO idem.dead_letters (raw, reason, source) VALUES ($1, 'undecodable envelope', $2)",
    )
    .bind(vec![0xffu8, b'{'])
    .bind(json!({"topic": "idem.actions", "partition": 3, "offset": 77}))
    .execute(pool)
    .await
    .unwrap();
    browser
        .find(Locator::Css("a[href='/console/dead-letters']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let letter = browser
        .wait()
        .for_element(Locator::Css("section.dead-letter"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        letter.contains("undecodable envelope")
            && letter.contains("(not UTF-8, hex) ff7b")
            && letter.contains("\"offset\":77"),
        "{letter}"
    );
    // A letter whose bytes this build reads (kept by one that could not) is replayed
    // through its confirmation page, once.
    let replayed = uuid::Uuid::new_v4();
    let envelope = json!({"v": 1, "action_id": replayed, "cell": "stripe.charge",
        "args": {"amount": 1500, "currency": "usd", "description": "replayed"},
        "ordering_key": replayed.to_string()});
    let (letter_id,): (i64,) = sqlx::query_as(
        "INSERT INTO idem.dead_letters (action_id, raw, reason, source) \
         VALUES ($1, $2, 'unknown envelope version 1 (this build reads 2)', $3) RETURNING id",
    )
    .bind(replayed)
    .bind(envelope.to_string().into_bytes())
    .bind(json!({"topic": "idem.actions", "partition": 1, "offset": 78}))
    .fetch_one(pool)
    .await
    .unwrap();
    browser
        .goto(&format!("{base}/console/dead-letters"))
        .await
        .unwrap();
    browser
        .wait()
        .for_element(Locator::Id(&format!("replay-{letter_id}")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let confirmation = browser
        .wait()
        .for_element(Locator::Id("confirmation"))
        .await
        .unwrap();
    let text = confirmation.text().await.unwrap();
    assert!(
        text.contains("unknown envelope version 1")
            && text.contains("\"description\":\"replayed\""),
        "{text}"
    );
    confirmation
        .find(Locator::Css("input[name=reason]"))
        .await
        .unwrap()
        .send_keys("workers upgraded")
        .await
        .unwrap();
    save_screenshot(&browser, "console-replay").await;
    confirmation
        .find(Locator::Id("confirm"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_flash(&browser, &format!("dead letter {letter_id} replayed")).await;
    let settled = idem_store::await_settled(pool, replayed.into(), Duration::from_secs(20))
        .await
        .unwrap()
        .expect("the replayed action settles");
    assert_eq!(settled.state, idem_core::State::Succeeded);
    assert_eq!(c.stripe.sim.effects_for(&replayed.to_string()), 1);
    browser
        .goto(&format!("{base}/console/dead-letters"))
        .await
        .unwrap();
    let kept = browser
        .wait()
        .for_element(Locator::Id(&format!("dead-{letter_id}")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        kept.contains("replayed by human:console:ops-alice") && kept.contains("workers upgraded"),
        "{kept}"
    );
    browser.close().await.unwrap();
    std::fs::remove_dir_all(&profile).ok();
    let who = idem_store::decisions::history(pool, declined.into())
        .await
        .unwrap();
    assert_eq!(
        (who[0].0.as_str(), who[0].1.as_str()),
        ("resend", "human:console:ops-alice")
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let row = idem_store::inbox::get(pool, declined.into())
            .await
            .unwrap()
            .unwrap();
        if row.state == idem_core::State::Failed && row.attempts == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{row:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.stripe.sim.effects_for(&declined.to_string()), 0);

    // The approved charge ran once; the rejected one never reached Stripe.
    let settled = idem_store::await_settled(
        pool,
        idem_core::ActionId::from(keep),
        Duration::from_secs(20),
    )
    .await
    .unwrap()
    .expect("settled");
    assert_eq!(settled.state, idem_core::State::Succeeded);
    let rejected = idem_store::inbox::get(pool, idem_core::ActionId::from(drop_))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rejected.state, idem_core::State::Rejected);
    assert_eq!(c.stripe.sim.effects_for(&keep.to_string()), 1);
    assert_eq!(c.stripe.sim.effects_for(&drop_.to_string()), 0);
    // The approved charge, the declined one twice (before and after the resend), the
    // explorer's charge and the replayed one.
    assert_eq!(c.stripe.sim.requests().len(), 5);
    // Audited with the person's token name, through the console.
    let who = idem_store::decisions::history(pool, idem_core::ActionId::from(keep))
        .await
        .unwrap();
    assert_eq!(who[0].1, "human:console:ops-alice");
    assert_eq!(who[0].2.as_deref(), Some("known customer"));
    c.worker.stop().await;
}

/// The value of the hidden `name` input in the form posting to `action`.
fn form_field(html: &str, action: &str, name: &str) -> String {
    let form = &html[html
        .find(&format!("action=\"{action}\""))
        .expect("the form")..];
    let form = &form[..form.find("</form>").unwrap()];
    let at = form
        .find(&format!("name={name} value=\""))
        .expect("the field")
        + format!("name={name} value=\"").len();
    form[at..at + form[at..].find('"').unwrap()].to_owned()
}

#[tokio::test]
async fn a_decision_without_its_forms_token_is_refused() {
    let c = Console::start("ops-bob").await;
    let (base, pool, submit, approver) = (&c.base, c.db.store.pool(), &c.submit, &c.approver);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let id = uuid::Uuid::new_v4();
    let r = http
        .post(format!("{base}/v1/actions"))
        .bearer_auth(submit)
        .json(&json!({"cell": "stripe.charge", "action_id": id,
                      "args": {"amount": 80_000, "currency": "usd"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    wait_held(pool, 1).await;
    let cookie = format!("idem_console={approver}");
    let page = http
        .get(format!("{base}/console"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let approve = format!("/console/actions/{id}/approve");
    let reject = format!("/console/actions/{id}/reject");
    let fingerprint = form_field(&page, &approve, "fingerprint");
    let list_form = &page[page.find(&format!("action=\"{approve}\"")).unwrap()..];
    let list_form = &list_form[..list_form.find("</form>").unwrap()];
    assert!(
        !list_form.contains("name=csrf"),
        "the list's Approve… only leads to the confirmation: {list_form}"
    );
    let confirmation = |path: String| {
        let http = http.clone();
        let (cookie, fingerprint) = (cookie.clone(), fingerprint.clone());
        async move {
            http.get(format!("{base}{path}"))
                .query(&[("fingerprint", fingerprint.as_str())])
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let approve_page = confirmation(approve.clone()).await;
    assert!(
        approve_page.contains("Charge $800.00 USD"),
        "{approve_page}"
    );
    let approve_token = form_field(&approve_page, &approve, "csrf");
    let reject_token = form_field(&confirmation(reject.clone()).await, &reject, "csrf");
    assert_ne!(approve_token, reject_token, "one token per form");
    assert!(
        !page.contains(approver.as_str()),
        "the page never shows the secret"
    );

    let post = |token: String| {
        http.post(format!("{base}{approve}"))
            .header("cookie", &cookie)
            .form(&[
                ("fingerprint", fingerprint.as_str()),
                ("csrf", token.as_str()),
            ])
            .send()
    };
    // A forged post (no way to know the token) and a token lifted from another form: 403.
    for forged in ["0".repeat(64), reject_token] {
        assert_eq!(post(forged).await.unwrap().status().as_u16(), 403);
    }
    let still = idem_store::inbox::get(pool, id.into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        still.state,
        idem_core::State::AwaitingApproval,
        "nothing decided"
    );
    // The page's own form: decided.
    assert_eq!(post(approve_token).await.unwrap().status().as_u16(), 303);
    let done = idem_store::await_settled(pool, id.into(), Duration::from_secs(20))
        .await
        .unwrap()
        .expect("settled");
    assert_eq!(done.state, idem_core::State::Succeeded);
}

/// Every built-in cell a policy can hold reads, in the browser, as the one sentence a person
/// approves: held by a fleet rule ("always"), shown first on its card, money in major units.
#[tokio::test]
async fn every_held_cell_reads_as_one_sentence_in_the_browser() {
    let db = TestDb::new().await;
    let pool = db.store.pool();
    // Nothing is sent: every action waits for a person, so the partners are never called.
    let cells = idem_cells::builtin::registry(
        |i| idem_cells::builtin::Access {
            base: "http://127.0.0.1:9".into(),
            credential: i.placeholder.into(),
            ..Default::default()
        },
        &|_, _| {},
    );
    let app = router(ApiState::new(db.store.clone(), Arc::new(cells.clone())));
    let server = SimServer::start(app, ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let base = server.base_url();
    let approver = tokens::create(pool, "ops-carol", &[Scope::Approve])
        .await
        .unwrap()
        .1;
    let examples = idem_cells::builtin::held_examples();
    let mut ids = vec![];
    for e in &examples {
        idem_store::policy::set(
            pool,
            e.cell,
            &idem_core::profile::ApprovalPolicy::Always,
            "human:test",
            "hold every cell for the sentence check",
        )
        .await
        .unwrap();
        let a = idem_store::NewAction::new(
            idem_core::ActionId::random(),
            idem_core::CellName::new(e.cell).unwrap(),
            e.args.clone(),
        )
        .submitted_by("token:agent");
        idem_store::enqueue(pool, &a).await.unwrap();
        ids.push(a.action_id);
    }
    let worker = RunningWorker::start(&db.store, cells);
    wait_held(pool, examples.len()).await;

    let (_driver, browser, profile) = open_browser().await;
    browser.goto(&format!("{base}/console")).await.unwrap();
    sign_in(&browser, &approver).await;
    for (e, id) in examples.iter().zip(&ids) {
        let item = browser
            .wait()
            .for_element(Locator::Id(&format!("action-{id}")))
            .await
            .unwrap();
        let sentence = item
            .find(Locator::Css("p.summary"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(sentence, e.sentence, "{}", e.cell);
        let text = item.text().await.unwrap();
        assert!(
            text.contains(&format!("the approval policy for {} (always)", e.cell))
                && text.contains("by token:agent"),
            "{}: {text}",
            e.cell
        );
    }
    save_screenshot(&browser, "console-every-cell").await;
    browser.close().await.unwrap();
    std::fs::remove_dir_all(&profile).ok();
    worker.stop().await;
}
