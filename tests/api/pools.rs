//! The API cannot starve the dispatcher (issue 8, item 4): its own pool, a
//! statement timeout on its queries, a cap on offset depth.

use super::*;

/// Backends of this test's database waiting for a lock.
async fn waiting_on_a_lock(app: &TestApp, platform: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
    )
    .bind(&app.db.name)
    .fetch_one(platform)
    .await
    .unwrap()
}

/// Status of one row, read through the platform's own connections.
async fn status_of(platform: &sqlx::PgPool, id: i64) -> String {
    sqlx::query_scalar("SELECT status FROM sms WHERE id = $1")
        .bind(id)
        .fetch_one(platform)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_dispatcher_sends_while_the_api_holds_every_connection_it_may_have() {
    let app = spawn_app_with(|c| {
        c.api.request_timeout = Duration::from_secs(60);
        // Long enough that the lookups hold their connections throughout.
        c.api.statement_timeout = Duration::from_secs(30);
    })
    .await;
    // The platform, on connections of its own, holds a lock on its client
    // table (a long migration, say): every POST's directory lookup waits on
    // it, holding an API connection.
    let platform = sqlx::PgPool::connect(&app.db.url).await.unwrap();
    let mut lock = platform.begin().await.unwrap();
    sqlx::query("LOCK TABLE m_client IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    // More stalled requests than the API may hold connections (and than the
    // single shared pool of 10 had before).
    let posts: Vec<_> = (0..12)
        .map(|_| {
            let request = app
                .http
                .post(format!("{}/sms", app.base))
                .bearer_auth(&app.read_send)
                .json(&json!({"message": "hello", "clientId": 1}));
            tokio::spawn(async move { request.send().await.map(|r| r.status()) })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || async {
            waiting_on_a_lock(&app, &platform).await >= 4
        })
        .await,
        "the lookups are waiting on the lock"
    );
    // Meanwhile the platform enqueues through the outbox table.
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO sms (client_id, mobile_no, message) VALUES (1, '+254 712 345 678', 'Your code is 1234') RETURNING id",
    )
    .fetch_one(&platform)
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            status_of(&platform, id).await == "sent"
        })
        .await,
        "the dispatcher sent and recorded while every API connection was held: {}",
        status_of(&platform, id).await
    );
    let outcomes: Vec<Option<String>> =
        sqlx::query_scalar("SELECT outcome FROM sms_attempt WHERE sms_id = $1")
            .bind(id)
            .fetch_all(&platform)
            .await
            .unwrap();
    assert_eq!(outcomes, vec![Some("accepted".to_owned())]);
    assert!(
        waiting_on_a_lock(&app, &platform).await >= 1,
        "the API was still held"
    );
    assert_eq!(received_ids(&app.provider).await, vec![id]);
    lock.rollback().await.unwrap();
    for post in posts {
        let status = post.await.unwrap().unwrap();
        assert!(status == 201 || status == 503, "{status}");
    }
}

#[tokio::test]
async fn an_api_query_over_the_statement_timeout_is_a_503_naming_it() {
    let app = spawn_app_with(|c| {
        c.api.request_timeout = Duration::from_secs(30);
        c.api.statement_timeout = Duration::from_millis(500);
    })
    .await;
    let id = app.db.insert(1, "+254 712 345 678", "hello").await;
    // Reading the history waits on a lock the test holds.
    let mut blocker = app.db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE sms_event IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let response = app
        .http
        .get(format!("{}/sms/{id}", app.base))
        .bearer_auth(&app.read_only)
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(
        response.headers().contains_key("retry-after"),
        "{:?}",
        response.headers()
    );
    let body: Value = response.json().await.unwrap();
    assert_error_shape(&body, StatusCode::SERVICE_UNAVAILABLE);
    let text = body.to_string();
    assert!(text.contains("api.statement_timeout"), "{text}");
    for leak in ["canceling statement", "57014", "sms_event"] {
        assert!(
            !text.contains(leak),
            "database text reached the caller: {text}"
        );
    }
    assert!(
        waited < Duration::from_secs(30),
        "cut off by the statement timeout, not the request timeout ({waited:?})"
    );
    blocker.rollback().await.unwrap();
    assert_eq!(app.get(&format!("/sms/{id}"), &app.read_only).await.0, 200);
}

#[tokio::test]
async fn an_offset_beyond_the_limit_is_a_400_pointing_to_cursor_paging() {
    let app = spawn_app().await;
    assert_eq!(app.get("/sms?offset=10000", &app.read_only).await.0, 200);
    let (status, body) = app
        .get(
            "/sms?offset=10001&orderBy=updatedAt&sortOrder=DESC",
            &app.read_only,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        assert_error_shape(&body, StatusCode::BAD_REQUEST).as_deref(),
        Some("offset")
    );
    let message = body["errors"][0]["developerMessage"].as_str().unwrap();
    for needle in ["offset", "10000", "api.max_offset", "cursor"] {
        assert!(message.contains(needle), "{needle} in {message:?}");
    }
}

#[tokio::test]
async fn api_reads_go_to_the_read_url_writes_and_the_dispatcher_to_the_primary() {
    // The "replica": another database, holding a row the primary does not have.
    let replica = TestDb::new().await;
    sqlx::query("SELECT setval(pg_get_serial_sequence('sms', 'id'), 1000)")
        .execute(&replica.pool)
        .await
        .unwrap();
    let only_on_replica = replica.insert(1, "+254 712 345 678", "replica row").await;
    let read_url = replica.url.clone();
    let app = spawn_app_with(move |c| {
        c.database.read_url = Some(smsrelay::secrets::Secret::new(read_url));
    })
    .await;

    // POST /sms looks up, checks its key and writes on the primary (the
    // replica has no m_client table at all).
    let body = json!({"message": "Your code is 1234", "clientId": 1});
    let (status, created) = app.post(body.clone(), &app.read_send, Some("k-1")).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    assert!(id < 1000, "written on the primary: {id}");
    let (status, replayed) = app.post(body, &app.read_send, Some("k-1")).await;
    assert_eq!(status, 201, "{replayed}");
    assert_eq!(
        replayed["id"].as_i64(),
        Some(id),
        "the key was checked on the primary"
    );

    // The dispatcher works the primary only: the replica's pending row is never sent.
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.db.status(id).await == "sent"
        })
        .await
    );
    assert_eq!(received_ids(&app.provider).await, vec![id]);
    assert_eq!(replica.status(only_on_replica).await, "pending");

    // The reads come from the replica.
    let (status, page) = app.get("/sms", &app.read_only).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page), vec![only_on_replica]);
    assert_eq!(
        app.get(&format!("/sms/{only_on_replica}"), &app.read_only)
            .await
            .0,
        200
    );
    assert_eq!(app.get(&format!("/sms/{id}"), &app.read_only).await.0, 404);
    let metrics = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("smsrelay_messages{status=\"pending\"} 1"),
        "{metrics}"
    );
}

/// The plan of the queue counts /metrics runs at each scrape.
async fn plan(db: &TestDb, sql: &str) -> String {
    let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}")))
        .fetch_all(&db.pool)
        .await
        .unwrap();
    rows.join("\n")
}

#[tokio::test]
async fn metrics_count_the_queue_from_its_indexes_not_the_whole_table() {
    let db = TestDb::new().await;
    // 50,000 finished messages, a few waiting and in flight.
    sqlx::raw_sql(
        "INSERT INTO sms (client_id, mobile_no, message, status, attempts, sent_at)
             SELECT g % 500 + 1, '+254712345678', 'done', 'sent', 1, now() FROM generate_series(1, 50000) g;
         INSERT INTO sms (client_id, mobile_no, message)
             SELECT g, '+254712345678', 'waiting' FROM generate_series(1, 7) g;
         INSERT INTO sms (client_id, mobile_no, message, status, attempts, locked_by, lease_expires_at)
             SELECT g, '+254712345678', 'in flight', 'sending', 1, 'elsewhere', now() + interval '1 hour'
             FROM generate_series(1, 3) g;
         ANALYZE sms;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let plan = plan(&db, smsrelay::store::QUEUE_COUNTS).await;
    println!("{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert!(
        plan.contains("sms_due_idx") || plan.contains("sms_status_idx"),
        "{plan}"
    );
    let stats = db.store.stats().await.unwrap();
    assert_eq!(
        stats.by_status,
        vec![
            (smsrelay::domain::Status::Pending, 7),
            (smsrelay::domain::Status::Sending, 3)
        ]
    );
}
