//! The HTTP API over a real socket, against a real PostgreSQL.

#[path = "../support/mod.rs"]
mod support;

mod pools;

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use smsrelay::api::settings::{Scope, TokenSettings};
use support::*;
use tokio_util::sync::CancellationToken;

/// A running smsrelay (dispatcher + API) on a fresh database with Fineract's directory tables.
struct TestApp {
    db: TestDb,
    base: String,
    http: reqwest::Client,
    read_send: String,
    read_only: String,
    send_only: String,
    provider: wiremock::MockServer,
    stop: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// [`spawn_app`] with `configure` applied to the config first.
async fn spawn_app_with(configure: impl FnOnce(&mut smsrelay::settings::Config)) -> TestApp {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "CREATE TABLE m_client (id bigint PRIMARY KEY, mobile_no varchar(50));
         CREATE TABLE m_staff (id bigint PRIMARY KEY, mobile_no varchar(50));
         INSERT INTO m_client VALUES (1, '+254 712 345 678'), (2, NULL), (3, 'not a number'), (4, '0711 000 111');
         INSERT INTO m_staff VALUES (7, '+254 722 000 777');",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let provider = accepting_provider().await;
    let mut config = test_config(&db, &provider.uri());
    config.api.listen = "127.0.0.1:0".parse().unwrap();
    config.api.body_limit = 4096;
    let mut tokens = Vec::new();
    let mut secrets = Vec::new();
    for (name, scopes) in [
        ("platform", vec![Scope::Read, Scope::Send]),
        ("screens", vec![Scope::Read]),
        ("notifier", vec![Scope::Send]),
    ] {
        let (token, digest) = smsrelay::api::auth::new_token();
        tokens.push(TokenSettings {
            name: name.into(),
            scopes,
            sha256: Some(digest),
            token_file: None,
            credential: None,
        });
        secrets.push(token);
    }
    config.api.tokens = tokens;
    configure(&mut config);
    config.validate().unwrap();
    let app = smsrelay::app::Application::from_parts(&config, db.store(), webhook(&config))
        .with_api(&config)
        .unwrap();
    let base = format!("http://{}", app.api_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(stop.clone()));
    // No idle pooled connections: a test of connection limits counts its own alone.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            http.get(format!("{base}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await
    );
    TestApp {
        db,
        base,
        http,
        read_send: secrets[0].clone(),
        read_only: secrets[1].clone(),
        send_only: secrets[2].clone(),
        provider,
        stop,
    }
}

impl TestApp {
    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, body: Value, token: &str, key: Option<&str>) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(format!("{}/sms", self.base))
            .bearer_auth(token)
            .json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Inserts rows with chosen creation times, as the platform would.
    async fn insert_at(
        &self,
        client: Option<i64>,
        staff: Option<i64>,
        number: &str,
        created: &str,
    ) -> i64 {
        sqlx::query_scalar(
            "INSERT INTO sms (client_id, staff_id, mobile_no, message, created_at, not_before)
             VALUES ($1, $2, $3, 'hello', $4::timestamptz, now() + interval '1 day') RETURNING id",
        )
        .bind(client)
        .bind(staff)
        .bind(number)
        .bind(created)
        .fetch_one(&self.db.pool)
        .await
        .unwrap()
    }

    async fn set_status(&self, id: i64, status: &str) {
        let sql = match status {
            "failed" => "UPDATE sms SET status = 'failed' WHERE id = $1",
            "sent" => {
                "UPDATE sms SET status = 'sending', locked_by = 't', lease_expires_at = now() WHERE id = $1;"
            }
            _ => unreachable!(),
        };
        sqlx::query(sql)
            .bind(id)
            .execute(&self.db.pool)
            .await
            .unwrap();
        if status == "sent" {
            sqlx::query("UPDATE sms SET status = 'sent', locked_by = NULL, lease_expires_at = NULL, sent_at = now() WHERE id = $1")
                .bind(id)
                .execute(&self.db.pool)
                .await
                .unwrap();
        }
    }
}

fn ids(page: &Value) -> Vec<i64> {
    page["pageItems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect()
}

/// Checks the platform's error shape and returns the first offending parameter name.
fn assert_error_shape(body: &Value, status: StatusCode) -> Option<String> {
    let keys: HashSet<&str> = body
        .as_object()
        .expect("error body is an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        HashSet::from([
            "developerMessage",
            "httpStatusCode",
            "defaultUserMessage",
            "userMessageGlobalisationCode",
            "errors"
        ]),
        "{body}"
    );
    assert_eq!(body["httpStatusCode"], json!(status.as_u16().to_string()));
    body["errors"].as_array().unwrap().first().map(|e| {
        for key in [
            "parameterName",
            "value",
            "developerMessage",
            "defaultUserMessage",
            "userMessageGlobalisationCode",
        ] {
            assert!(e.get(key).is_some(), "errors[0] has {key}: {body}");
        }
        e["parameterName"].as_str().unwrap().to_owned()
    })
}

#[tokio::test]
async fn list_filters_and_pages() {
    let app = spawn_app().await;
    let a = app
        .insert_at(Some(1), None, "+254711000001", "2026-11-01T08:00:00Z")
        .await;
    let b = app
        .insert_at(Some(1), None, "+254711000002", "2026-11-02T08:00:00Z")
        .await;
    let c = app
        .insert_at(Some(2), None, "+254711000003", "2026-11-02T23:59:59Z")
        .await;
    let d = app
        .insert_at(None, Some(7), "+254711000004", "2026-11-03T00:00:00Z")
        .await;
    let e = app
        .insert_at(Some(1), None, "+254711000005", "2026-11-04T08:00:00Z")
        .await;
    app.set_status(b, "sent").await;
    app.set_status(c, "failed").await;
    let t = &app.read_only;

    let (status, all) = app.get("/sms", t).await;
    assert_eq!(status, 200);
    assert_eq!(all["totalFilteredRecords"], 5);
    assert_eq!(ids(&all), [a, b, c, d, e]);
    assert_eq!(all["nextCursor"], Value::Null);
    let item = &all["pageItems"][1];
    assert_eq!(item["status"], "sent");
    assert_eq!(item["clientId"], 1);
    assert_eq!(item["staffId"], Value::Null);
    assert_eq!(item["createdAt"], "2026-11-02T08:00:00Z");
    assert!(item["sentAt"].as_str().unwrap().ends_with('Z'));

    for (query, expected) in [
        ("clientId=1", vec![a, b, e]),
        ("staffId=7", vec![d]),
        ("status=sent", vec![b]),
        ("status=sent,failed", vec![b, c]),
        ("status=pending&status=failed", vec![a, c, d, e]),
        ("mobileNo=%2B254711000004", vec![d]),
        ("createdFrom=2026-11-02&createdTo=2026-11-02", vec![b, c]),
        (
            "createdFrom=2026-11-02T08:00:00Z&createdTo=2026-11-03T00:00:00Z",
            vec![b, c, d],
        ),
        ("clientId=1&status=pending", vec![a, e]),
        ("orderBy=createdAt&sortOrder=DESC", vec![e, d, c, b, a]),
        ("orderBy=status&sortOrder=asc", vec![c, a, d, e, b]),
        // NULLs last in both directions; ties follow id in the same direction.
        ("orderBy=sentAt&sortOrder=DESC", vec![b, e, d, c, a]),
        ("orderBy=sentAt", vec![b, a, c, d, e]),
        ("offset=1&limit=2", vec![b, c]),
        ("offset=10", vec![]),
    ] {
        let (status, page) = app.get(&format!("/sms?{query}"), t).await;
        assert_eq!(status, 200, "{query}: {page}");
        assert_eq!(ids(&page), expected, "{query}");
    }
    let (_, paged) = app.get("/sms?clientId=1&offset=1&limit=1", t).await;
    assert_eq!(
        (paged["totalFilteredRecords"].as_i64(), ids(&paged)),
        (Some(3), vec![b])
    );
}

#[tokio::test]
async fn bad_query_values_are_400s_naming_the_parameter() {
    let app = spawn_app().await;
    for (query, parameter) in [
        ("orderBy=id%3BDROP%20TABLE%20sms", "orderBy"),
        ("orderBy=message", "orderBy"),
        ("sortOrder=sideways", "sortOrder"),
        ("limit=-1", "limit"),
        ("clientId=x", "clientId"),
        ("status=lost", "status"),
        ("createdTo=tomorrow", "createdTo"),
        ("cursor=garbage!", "cursor"),
        ("colour=blue", "colour"),
    ] {
        let (status, body) = app.get(&format!("/sms?{query}"), &app.read_only).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(
            assert_error_shape(&body, StatusCode::BAD_REQUEST).as_deref(),
            Some(parameter),
            "{query}"
        );
    }
    // Still there: the injection attempt never reached SQL.
    assert_eq!(app.db.count("pending").await, 0);
    let (status, _) = app.get("/sms", &app.read_only).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn cursor_paging_visits_10000_rows_exactly_once() {
    let app = spawn_app().await;
    sqlx::query(
        "INSERT INTO sms (client_id, mobile_no, message, not_before)
         SELECT 1 + g % 3, '+2547' || lpad(g::text, 8, '0'), 'm', now() + interval '1 day' FROM generate_series(1, 10000) g",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    for direction in ["ASC", "DESC"] {
        let mut seen = Vec::new();
        let mut cursor = String::new();
        let mut pages = 0;
        loop {
            let (status, page) = app
                .get(
                    &format!("/sms?cursor={cursor}&limit=700&sortOrder={direction}"),
                    &app.read_only,
                )
                .await;
            assert_eq!(status, 200, "{page}");
            assert_eq!(page["totalFilteredRecords"], Value::Null);
            seen.extend(ids(&page));
            pages += 1;
            match page["nextCursor"].as_str() {
                Some(next) => cursor = next.to_owned(),
                None => break,
            }
        }
        assert_eq!(pages, 15, "{direction}: 10000 rows in pages of 700");
        assert_eq!(seen.len(), 10_000, "{direction}");
        assert_eq!(
            seen.iter().collect::<HashSet<_>>().len(),
            10_000,
            "{direction}: no row twice"
        );
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        if direction == "DESC" {
            sorted.reverse();
        }
        assert_eq!(seen, sorted, "{direction}: in id order");
    }
    // With a filter, the cursor walks only matching rows; limit=5000 is capped at api.max_limit (1000).
    let mut cursor = String::new();
    let mut sizes = Vec::new();
    loop {
        let (_, page) = app
            .get(
                &format!("/sms?cursor={cursor}&clientId=2&limit=5000"),
                &app.read_only,
            )
            .await;
        assert!(
            page["pageItems"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i["clientId"] == 2)
        );
        sizes.push(ids(&page).len());
        match page["nextCursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(sizes, [1000, 1000, 1000, 334]);
}

#[tokio::test]
async fn post_queues_for_a_client_and_the_dispatcher_sends_it() {
    let app = spawn_app().await;
    let (status, created) = app
        .post(
            json!({"message": "Your loan is approved", "clientId": 1}),
            &app.read_send,
            None,
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["resourceId"].as_i64().unwrap();
    assert_eq!(created["id"], id);
    // The reply reads the row back after the commit; the dispatcher, woken by
    // that commit, may already have claimed (or even sent) it.
    assert!(
        ["pending", "sending", "sent"].contains(&created["status"].as_str().unwrap()),
        "{created}"
    );
    assert_eq!(
        created["mobileNo"], "+254 712 345 678",
        "the number on record at that moment"
    );
    assert_eq!(created["clientId"], 1);

    // The number changes later: the message keeps the one it was created with.
    sqlx::query("UPDATE m_client SET mobile_no = '+254 799 999 999' WHERE id = 1")
        .execute(&app.db.pool)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.get(&format!("/sms/{id}"), &app.read_only).await.1["status"] == "sent"
        })
        .await
    );
    let (status, detail) = app.get(&format!("/sms/{id}"), &app.read_only).await;
    assert_eq!(status, 200);
    assert_eq!(detail["mobileNo"], "+254 712 345 678");
    assert_eq!(detail["providerMessageId"], format!("prov-{id}"));
    let history: Vec<(String, String)> = detail["statusHistory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap().into(),
                e["to"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            ("pending".into(), "sending".into()),
            ("sending".into(), "sent".into())
        ]
    );
    let attempts = detail["attemptHistory"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["outcome"], "accepted");
    assert_eq!(attempts[0]["httpStatus"], 200);
    assert_eq!(
        attempts[0]["provider"], "webhook",
        "the provider it went to"
    );
    let bodies: Vec<Value> = app
        .provider
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(
        bodies,
        [json!({"id": id, "to": "+254712345678", "message": "Your loan is approved"})]
    );

    let (status, staff) = app
        .post(
            json!({"message": "Meeting at 10", "staffId": 7}),
            &app.send_only,
            None,
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        (staff["staffId"].as_i64(), staff["clientId"].as_i64()),
        (Some(7), None)
    );
    assert_eq!(staff["mobileNo"], "+254 722 000 777");
}

#[tokio::test]
async fn post_refuses_what_it_cannot_send_and_stores_nothing() {
    let app = spawn_app().await;
    let t = &app.read_send;
    for (body, status, parameter) in [
        (
            json!({"message": "x", "clientId": 1, "staffId": 7}),
            400,
            Some("clientId"),
        ),
        (json!({"message": "x"}), 400, Some("clientId")),
        (
            json!({"message": "   ", "clientId": 1}),
            400,
            Some("message"),
        ),
        (
            json!({"message": "x", "clientId": -4}),
            400,
            Some("clientId"),
        ),
        (
            json!({"message": "x", "clientId": "+254712345678"}),
            400,
            Some("clientId"),
        ),
        (
            json!({"message": "x", "clientId": 1, "mobileNo": "+254712345678"}),
            400,
            Some("mobileNo"),
        ),
        (json!({"clientId": 1}), 400, Some("message")),
        (
            json!({"message": "a".repeat(1531), "clientId": 1}),
            400,
            Some("message"),
        ),
        (json!({"message": "x", "clientId": 99}), 404, None),
        (json!({"message": "x", "staffId": 99}), 404, None),
        (json!({"message": "x", "clientId": 2}), 422, None),
        (json!({"message": "x", "clientId": 3}), 422, None),
    ] {
        let (got, reply) = app.post(body.clone(), t, None).await;
        assert_eq!(got.as_u16(), status, "{body}: {reply}");
        assert_eq!(
            assert_error_shape(&reply, got).as_deref(),
            parameter,
            "{body}"
        );
        assert!(
            !reply.to_string().contains("712345678"),
            "a number is never echoed: {reply}"
        );
    }
    let (_, both) = app
        .post(
            json!({"message": "x", "clientId": 1, "staffId": 7}),
            t,
            None,
        )
        .await;
    let names: Vec<&str> = both["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["parameterName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["clientId", "staffId"]);
    let (_, none) = app
        .post(json!({"message": "x", "clientId": 2}), t, None)
        .await;
    assert_eq!(
        none["developerMessage"],
        "client 2 has no mobile number on record"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM sms")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "nothing was half-written");
}

#[tokio::test]
async fn a_failing_directory_lookup_tells_the_caller_nothing_of_the_database() {
    let app = spawn_app().await;
    // The platform's table is gone: the directory query fails in the database.
    sqlx::raw_sql("DROP TABLE m_client")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let (status, reply) = app
        .post(
            json!({"message": "hello", "clientId": 1}),
            &app.read_send,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let text = reply.to_string();
    for leak in ["m_client", "relation", "does not exist", "42P01"] {
        assert!(
            !text.contains(leak),
            "the database's error reached the caller: {text}"
        );
    }
    assert!(text.contains("error.msg.directory.failed"), "{text}");
}

#[tokio::test]
async fn idempotency_scopes_cannot_collide_across_token_names() {
    // Token `a` with key `b:c` and token `a:b` with key `c` are different requests.
    let app = spawn_app_with(|config| {
        config.api.tokens[0].name = "a".into();
        config.api.tokens[2].name = "a:b".into();
    })
    .await;
    let body = json!({"message": "Repayment received", "clientId": 4});
    let (status, first) = app.post(body.clone(), &app.read_send, Some("b:c")).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, second) = app.post(body, &app.send_only, Some("c")).await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    assert_ne!(first["resourceId"], second["resourceId"]);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM sms")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 2, "two callers, two messages");
}

#[tokio::test]
async fn an_idempotent_retry_returns_the_first_result() {
    let app = spawn_app().await;
    let body = json!({"message": "Repayment received", "clientId": 4});
    let (first_status, first) = app
        .post(body.clone(), &app.read_send, Some("txn-981"))
        .await;
    let (again_status, again) = app
        .post(body.clone(), &app.read_send, Some("txn-981"))
        .await;
    assert_eq!(
        (first_status, again_status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_eq!(first["resourceId"], again["resourceId"]);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM sms")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1, "one SMS, not two");
    // The same key for another request is refused; another caller's key space is its own.
    let (status, reply) = app
        .post(
            json!({"message": "Something else", "clientId": 4}),
            &app.read_send,
            Some("txn-981"),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(
        assert_error_shape(&reply, status).as_deref(),
        Some("Idempotency-Key")
    );
    let (status, other) = app.post(body, &app.send_only, Some("txn-981")).await;
    assert_eq!(status, 201);
    assert_ne!(other["resourceId"], first["resourceId"]);
    let (status, reply) = app
        .post(
            json!({"message": "x", "clientId": 4}),
            &app.read_send,
            Some(&"k".repeat(201)),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        assert_error_shape(&reply, status).as_deref(),
        Some("Idempotency-Key")
    );
}

#[tokio::test]
async fn tokens_and_scopes_401_versus_403() {
    let app = spawn_app().await;
    let url = format!("{}/sms", app.base);
    let response = app.http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_error_shape(&response.json().await.unwrap(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.get("/sms", "smsr_not-a-real-token").await.0, 401);
    let basic = app
        .http
        .get(&url)
        .basic_auth("admin", Some("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);

    assert_eq!(app.get("/sms", &app.read_only).await.0, 200);
    let (status, body) = app.get("/sms", &app.send_only).await;
    assert_eq!(status, 403);
    assert_error_shape(&body, StatusCode::FORBIDDEN);
    let (status, _) = app
        .post(json!({"message": "x", "clientId": 1}), &app.read_only, None)
        .await;
    assert_eq!(status, 403);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM sms")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    // Health needs no token.
    assert_eq!(
        app.http
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn malformed_requests_get_the_error_shape_never_a_500() {
    let app = spawn_app().await;
    let post = |body: &'static str, content_type: &'static str| {
        app.http
            .post(format!("{}/sms", app.base))
            .bearer_auth(&app.read_send)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    for (response, status, parameter) in [
        (
            post("{\"message\": \"x\", \"clientId\": ", "application/json")
                .await
                .unwrap(),
            400,
            Some("body"),
        ),
        (
            post("[1, 2]", "application/json").await.unwrap(),
            400,
            Some("body"),
        ),
        (
            post("message=x&clientId=1", "application/x-www-form-urlencoded")
                .await
                .unwrap(),
            415,
            None,
        ),
        (
            app.http
                .post(format!("{}/sms", app.base))
                .bearer_auth(&app.read_send)
                .json(&json!({"message": "x".repeat(5000), "clientId": 1}))
                .send()
                .await
                .unwrap(),
            413,
            None,
        ),
    ] {
        let got = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(got.as_u16(), status, "{body}");
        assert_eq!(
            assert_error_shape(&body, got).as_deref(),
            parameter,
            "{body}"
        );
    }
    for (path, status) in [
        ("/sms/abc", 400),
        ("/sms/0", 400),
        ("/sms/987654", 404),
        ("/nowhere", 404),
    ] {
        let (got, body) = app.get(path, &app.read_only).await;
        assert_eq!(got.as_u16(), status, "{path}");
        assert_error_shape(&body, got);
    }
    let response = app
        .http
        .delete(format!("{}/sms", app.base))
        .bearer_auth(&app.read_send)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
}

#[tokio::test]
async fn a_database_outage_is_a_503_with_retry_after() {
    let app = spawn_app().await;
    app.db.cut().await;
    let response = app
        .http
        .get(format!("{}/sms", app.base))
        .bearer_auth(&app.read_only)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    assert_error_shape(
        &response.json().await.unwrap(),
        StatusCode::SERVICE_UNAVAILABLE,
    );
    let ready = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        app.http
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.db.restore().await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            app.get("/sms", &app.read_only).await.0 == 200
        })
        .await
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text_without_personal_data() {
    let app = spawn_app().await;
    let (status, _) = app
        .post(
            json!({"message": "hello", "clientId": 1}),
            &app.read_send,
            None,
        )
        .await;
    assert_eq!(status, 201);
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.db.count("sent").await == 1
        })
        .await
    );
    let text = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        assert!(value.parse::<f64>().is_ok(), "value of {line}");
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "name of {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "labels of {line}"
            );
        }
    }
    for expected in [
        "smsrelay_messages{status=\"pending\"} 0",
        "smsrelay_messages{status=\"sending\"} 0",
        "smsrelay_queue_due ",
        "smsrelay_oldest_due_age_seconds ",
        "smsrelay_sends_total{outcome=\"accepted\"}",
        "smsrelay_send_duration_seconds_bucket",
        "smsrelay_claim_batch_size_bucket",
        "smsrelay_api_requests_total{method=\"POST\",route=\"/sms\",status=\"201\"}",
        // The webhook asks for no reports: nothing is ever overdue, and it says so.
        "smsrelay_reports_overdue 0",
    ] {
        assert!(
            text.contains(expected),
            "metrics contain {expected}:\n{text}"
        );
    }
    assert!(
        !text.contains("712345678") && !text.contains("hello"),
        "no personal data in metrics"
    );
    // Terminal states are not counted at scrape time (they hold nearly every row).
    assert!(
        !text.contains("smsrelay_messages{status=\"sent\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn openapi_describes_what_is_served() {
    let app = spawn_app().await;
    let doc: Value = app
        .http
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc,
        serde_json::to_value(smsrelay::api::openapi_document(&Default::default())).unwrap()
    );
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/sms", "get"),
        ("/sms", "post"),
        ("/sms/{id}", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} documented"
        );
    }
    let documented: HashSet<&str> = paths["/sms"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        documented,
        HashSet::from(smsrelay::api::sms::LIST_PARAMETERS)
    );

    // Served bodies have exactly the documented properties.
    let schema_keys = |name: &str| -> HashSet<String> {
        doc["components"]["schemas"][name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name}"))
            .keys()
            .cloned()
            .collect()
    };
    let (_, created) = app
        .post(
            json!({"message": "hi", "clientId": 1}),
            &app.read_send,
            None,
        )
        .await;
    let id = created["resourceId"].as_i64().unwrap();
    let (_, page) = app.get("/sms", &app.read_only).await;
    let keys = |v: &Value| -> HashSet<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(keys(&page), schema_keys("SmsPage"));
    assert_eq!(keys(&page["pageItems"][0]), schema_keys("SmsItem"));
    let (_, error) = app.get("/sms?limit=0", &app.read_only).await;
    assert_eq!(keys(&error), schema_keys("ErrorBody"));
    assert_eq!(keys(&error["errors"][0]), schema_keys("ParameterError"));
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.db.count("sent").await == 1
        })
        .await
    );
    let (_, detail) = app.get(&format!("/sms/{id}"), &app.read_only).await;
    assert_eq!(
        keys(&detail["attemptHistory"][0]),
        schema_keys("AttemptItem")
    );
    assert_eq!(
        keys(&detail["statusHistory"][0]),
        schema_keys("StatusChange")
    );
}

/// The number of rows in `sms`.
async fn rows(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM sms")
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn message_text_is_checked_before_anything_is_stored() {
    let app = spawn_app().await;
    for message in [
        "hello\u{0}world",
        "ring\u{7}",
        "\u{1b}[31mred",
        "\u{200B}\u{200C}\u{200D}\u{2060}\u{FEFF}",
        " \u{200B}\n\u{FE0F} ",
    ] {
        let (status, reply) = app
            .post(
                json!({"message": message, "clientId": 1}),
                &app.read_send,
                None,
            )
            .await;
        assert_eq!(status, 400, "{message:?}: {reply}");
        assert_eq!(
            assert_error_shape(&reply, status).as_deref(),
            Some("message"),
            "{message:?}"
        );
    }
    let (_, reply) = app
        .post(
            json!({"message": "hello\u{0}world", "clientId": 1}),
            &app.read_send,
            None,
        )
        .await;
    // The dispatcher records the same words for a row INSERTed with this text.
    assert_eq!(
        reply["errors"][0]["developerMessage"],
        "message contains the control character U+0000 at character 6; only newline, tab and carriage return are allowed"
    );
    assert_eq!(rows(&app).await, 0, "nothing was stored");
    // Line breaks, tabs and a zero-width joiner inside real text are fine.
    let (status, created) = app
        .post(
            json!({"message": "Dear client,\r\n\tpaid 👨\u{200D}👩", "clientId": 1}),
            &app.read_send,
            None,
        )
        .await;
    assert_eq!(status, 201, "{created}");
}

#[tokio::test]
async fn query_values_beyond_what_the_databases_store_are_400s() {
    let app = spawn_app().await;
    for (query, parameter) in [
        ("mobileNo=%00", "mobileNo"),
        ("mobileNo=%2B254711%0A000004", "mobileNo"),
        ("createdFrom=-4713-01-01", "createdFrom"),
        ("createdFrom=0000-01-01", "createdFrom"),
        ("createdFrom=0999-12-31T23:59:59Z", "createdFrom"),
        ("createdTo=9999-12-31T23:30:00-01:00", "createdTo"),
        ("offset=9223372036854775808", "offset"),
        // Deeper than api.max_offset (10000): cursor paging.
        ("offset=9223372036854775807", "offset"),
        ("offset=10001", "offset"),
        ("offset=18446744073709551615", "offset"),
        ("offset=%2B1", "offset"),
        ("limit=%2B5", "limit"),
        ("limit=05", "limit"),
        ("clientId=%2B1", "clientId"),
        ("clientId=01", "clientId"),
        ("staffId=9223372036854775808", "staffId"),
        ("orderBy=created_at", "orderBy"),
        ("orderBy=client_id", "orderBy"),
        ("orderBy=sent_at", "orderBy"),
    ] {
        let (status, body) = app.get(&format!("/sms?{query}"), &app.read_only).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(
            assert_error_shape(&body, StatusCode::BAD_REQUEST).as_deref(),
            Some(parameter),
            "{query}"
        );
    }
    let a = app
        .insert_at(Some(1), None, "+254711000001", "2026-11-01T08:00:00Z")
        .await;
    // The edges themselves are accepted.
    for (query, expected) in [
        ("createdFrom=1000-01-01&createdTo=9999-12-31", vec![a]),
        ("createdTo=9999-12-31T23:59:59.999999Z", vec![a]),
        ("offset=10000", vec![]),
        ("offset=0&limit=1", vec![a]),
        ("clientId=9223372036854775807", vec![]),
    ] {
        let (status, page) = app.get(&format!("/sms?{query}"), &app.read_only).await;
        assert_eq!(status, 200, "{query}: {page}");
        assert_eq!(ids(&page), expected, "{query}");
    }
}

#[tokio::test]
async fn path_ids_are_canonical() {
    let app = spawn_app().await;
    let id = app
        .insert_at(Some(1), None, "+254711000001", "2026-11-01T08:00:00Z")
        .await;
    assert_eq!(app.get(&format!("/sms/{id}"), &app.read_only).await.0, 200);
    for path in [
        format!("/sms/%2B{id}"),
        format!("/sms/0{id}"),
        format!("/sms/{id}%20"),
        "/sms/9223372036854775808".to_owned(),
        "/sms/-1".to_owned(),
    ] {
        let (status, body) = app.get(&path, &app.read_only).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(
            assert_error_shape(&body, status).as_deref(),
            Some("id"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn the_post_body_must_be_one_json_object() {
    let app = spawn_app().await;
    for body in [
        r#"["text", null, 1]"#,
        r#" ["Hello", 1, null]"#,
        r#""message""#,
        "null",
        "1",
    ] {
        let response = app
            .http
            .post(format!("{}/sms", app.base))
            .bearer_auth(&app.read_send)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let reply: Value = response.json().await.unwrap();
        assert_eq!(status, 400, "{body}: {reply}");
        assert_eq!(
            assert_error_shape(&reply, status).as_deref(),
            Some("body"),
            "{body}"
        );
    }
    assert_eq!(rows(&app).await, 0, "no SMS from a JSON array");
}

#[tokio::test]
async fn a_repeated_authorization_or_idempotency_key_header_is_refused() {
    let app = spawn_app().await;
    let url = format!("{}/sms", app.base);
    let response = app
        .http
        .get(&url)
        .header("authorization", format!("Bearer {}", app.read_only))
        .header("authorization", "Bearer smsr_someone-else")
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        assert_error_shape(&body, status).as_deref(),
        Some("Authorization")
    );
    let response = app
        .http
        .post(&url)
        .bearer_auth(&app.read_send)
        .header("idempotency-key", "txn-1")
        .header("idempotency-key", "txn-2")
        .json(&json!({"message": "hello", "clientId": 1}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        assert_error_shape(&body, status).as_deref(),
        Some("Idempotency-Key")
    );
    assert_eq!(rows(&app).await, 0);
}

#[tokio::test]
async fn a_token_without_the_send_scope_gets_403_whatever_its_body() {
    let app = spawn_app().await;
    let post = |body: String, content_type: &'static str| {
        app.http
            .post(format!("{}/sms", app.base))
            .bearer_auth(&app.read_only)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    for (body, content_type) in [
        (
            r#"{"message": "x", "clientId": "#.to_owned(),
            "application/json",
        ),
        (
            format!(r#"{{"message": "{}", "clientId": 1}}"#, "x".repeat(5000)),
            "application/json",
        ),
        (
            "message=x&clientId=1".to_owned(),
            "application/x-www-form-urlencoded",
        ),
        (r#"["text", null, 1]"#.to_owned(), "application/json"),
        (
            r#"{"message": "x", "clientId": 1}"#.to_owned(),
            "application/json",
        ),
    ] {
        let response = post(body.clone(), content_type).await.unwrap();
        let status = response.status();
        let reply: Value = response.json().await.unwrap();
        assert_eq!(
            status,
            403,
            "{content_type} {}: {reply}",
            &body[..body.len().min(40)]
        );
        assert_error_shape(&reply, status);
    }
    assert_eq!(rows(&app).await, 0);
}

/// Opens a raw connection to the API.
async fn connect(app: &TestApp) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads one HTTP response (head and Content-Length body) within `within`;
/// `None` if none came. Returns the head and the body.
async fn read_response(
    stream: &mut tokio::net::TcpStream,
    within: Duration,
) -> Option<(String, String)> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return Some((head.to_owned(), body.to_owned()));
            }
        }
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// True when the server closes `stream` within `within` (EOF or reset, nothing more sent).
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// The value of one `smsrelay_api_requests_total` series, 0 if absent.
async fn requests_counted(app: &TestApp, method: &str, route: &str, status: u16) -> f64 {
    let text = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!(
        "smsrelay_api_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn every_refusal_has_the_error_shape_and_is_counted() {
    let app = spawn_app().await;
    // Percent-decoding to something that is not UTF-8: still JSON, still naming `id`.
    let response = app
        .http
        .get(format!("{}/sms/%ff", app.base))
        .bearer_auth(&app.read_only)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        assert_error_shape(&body, StatusCode::BAD_REQUEST).as_deref(),
        Some("id")
    );
    // Method not allowed, in the error shape, saying what is allowed.
    let response = app
        .http
        .delete(format!("{}/sms", app.base))
        .bearer_auth(&app.read_send)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_error_shape(
        &response.json().await.unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
    );
    // 401 says how to authenticate.
    let response = app
        .http
        .get(format!("{}/sms", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let response = app
        .http
        .get(format!("{}/sms/1", app.base))
        .bearer_auth("smsr_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(requests_counted(&app, "GET", "/sms/{id}", 400).await, 1.0);
    assert_eq!(requests_counted(&app, "DELETE", "/sms", 405).await, 1.0);
    assert_eq!(requests_counted(&app, "GET", "/sms", 401).await, 1.0);
}

/// Sends a POST whose body stops halfway, and returns the answer.
async fn stalled_post(app: &TestApp) -> (String, String) {
    use tokio::io::AsyncWriteExt;
    let mut stream = connect(app).await;
    let head = format!(
        "POST /sms HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"message\": ",
        app.read_send
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    read_response(&mut stream, Duration::from_secs(10))
        .await
        .expect("an answer to a stalled body")
}

#[tokio::test]
async fn a_stalled_body_is_a_408_in_the_error_shape() {
    let app = spawn_app_with(|c| {
        c.api.body_read_timeout = Duration::from_millis(500);
        c.api.request_timeout = Duration::from_secs(5);
    })
    .await;
    let started = std::time::Instant::now();
    let (head, body) = stalled_post(&app).await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the body timeout, not the request timeout"
    );
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert_error_shape(
        &serde_json::from_str(&body).unwrap(),
        StatusCode::REQUEST_TIMEOUT,
    );
    assert_eq!(requests_counted(&app, "POST", "/sms", 408).await, 1.0);
    assert_eq!(rows(&app).await, 0);
}

#[tokio::test]
async fn a_request_over_the_time_limit_is_a_503_with_retry_after() {
    let app = spawn_app_with(|c| {
        c.api.body_read_timeout = Duration::from_secs(30);
        c.api.request_timeout = Duration::from_millis(500);
    })
    .await;
    let (head, body) = stalled_post(&app).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: "),
        "{head}"
    );
    assert_error_shape(
        &serde_json::from_str(&body).unwrap(),
        StatusCode::SERVICE_UNAVAILABLE,
    );
    assert_eq!(requests_counted(&app, "POST", "/sms", 503).await, 1.0);
    // Readiness answers 503 with Retry-After too.
    app.db.cut().await;
    let ready = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.headers()["retry-after"], "5");
    app.db.restore().await;
}

#[tokio::test]
async fn idle_and_half_sent_connections_are_closed_after_their_timeouts() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(|c| {
        c.api.idle_timeout = Duration::from_secs(2);
        c.api.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    // A keep-alive connection after one answered request: open until idle_timeout, then closed.
    let mut idle = connect(&app).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut idle, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let answered = std::time::Instant::now();
    // A connection that never sends anything is idle too.
    let mut silent = connect(&app).await;
    // Headers begun and never finished: closed after header_read_timeout.
    let mut half = connect(&app).await;
    half.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    let half_started = std::time::Instant::now();
    assert!(
        closed_within(&mut half, Duration::from_secs(5)).await,
        "half-sent headers closed"
    );
    let waited = half_started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(1900),
        "closed after header_read_timeout (1s), took {waited:?}"
    );
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)).await,
        "idle keep-alive closed"
    );
    let waited = answered.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_millis(3500),
        "closed after idle_timeout (2s), took {waited:?}"
    );
    assert!(
        closed_within(&mut silent, Duration::from_secs(3)).await,
        "silent connection closed"
    );
    // A keep-alive connection in use stays usable across requests shorter apart than the timeout.
    let mut busy = connect(&app).await;
    for _ in 0..3 {
        busy.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let (head, _) = read_response(&mut busy, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
}

#[tokio::test]
async fn no_more_than_max_connections_are_served_at_once() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(|c| c.api.max_connections = 2).await;
    // Let the server see the readiness probe's connection close.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = connect(&app).await;
    let second = connect(&app).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = connect(&app).await;
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(
        read_response(&mut third, Duration::from_secs(1))
            .await
            .is_none(),
        "a third connection waits while two are open"
    );
    drop(first);
    let (head, _) = read_response(&mut third, Duration::from_secs(5))
        .await
        .expect("served once a slot is free");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(second);
}

#[tokio::test]
async fn openapi_states_the_bounds_and_rules_the_server_applies() {
    let app = spawn_app().await;
    let doc: Value = app
        .http
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["ParameterError"]["properties"]["value"]["type"],
        json!(["string", "null"]),
        "the server echoes refused values as strings"
    );
    let parameter = |name: &str| -> Value {
        doc["paths"]["/sms"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name}"))["schema"]
            .clone()
    };
    assert_eq!(parameter("limit")["minimum"], 1);
    assert_eq!(parameter("offset")["minimum"], 0);
    // api.max_offset, the default here.
    assert_eq!(parameter("offset")["maximum"], json!(10_000));
    assert_eq!(parameter("clientId")["minimum"], 1);
    assert_eq!(parameter("staffId")["minimum"], 1);
    assert_eq!(
        parameter("orderBy")["enum"],
        json!([
            "id",
            "createdAt",
            "updatedAt",
            "sentAt",
            "status",
            "clientId",
            "staffId"
        ])
    );
    let request = &schemas["NewSmsRequest"];
    assert_eq!(request["additionalProperties"], false);
    assert_eq!(
        request["oneOf"],
        json!([
            {"properties": {"clientId": {"type": "integer"}}, "required": ["clientId"]},
            {"properties": {"staffId": {"type": "integer"}}, "required": ["staffId"]},
        ]),
        "exactly one of clientId, staffId"
    );
    assert_eq!(
        request["properties"]["message"]["pattern"],
        smsrelay::domain::text::message_pattern()
    );
    assert_eq!(
        doc["paths"]["/sms/{id}"]["get"]["parameters"][0]["schema"]["minimum"],
        1
    );
    // What the document calls an integer, the server takes: 1.0 is client 1.
    let (status, created) = app
        .post(
            json!({"message": "hi", "clientId": 1.0}),
            &app.read_send,
            None,
        )
        .await;
    assert_eq!(
        (status, created["clientId"].as_i64()),
        (StatusCode::CREATED, Some(1))
    );
    let (status, reply) = app
        .post(
            json!({"message": "hi", "clientId": 1.5}),
            &app.read_send,
            None,
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        assert_error_shape(&reply, status).as_deref(),
        Some("clientId")
    );
}

#[tokio::test]
async fn the_provider_paused_gauge_is_exported_from_the_start() {
    let app = spawn_app().await;
    let scrape = || async {
        app.http
            .get(format!("{}/metrics", app.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            scrape()
                .await
                .contains("smsrelay_provider_paused{provider=\"webhook\"} 0")
        })
        .await,
        "{}",
        scrape().await
    );
}
