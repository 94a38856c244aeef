//! What the database itself enforces: the status graph and the recipient rule.

use smsrelay::domain::Status;

use crate::backends::{Arg, Backend, NULL_INT, NULL_TEXT, NULL_TIME, TestStore, int, text, time};

conformance!(
    the_database_enforces_exactly_the_status_graph,
    the_database_refuses_rows_outside_the_contract,
);

/// Every move between two statuses is allowed by the database exactly
/// when `src/domain/status.rs` allows it; a refused one names itself.
async fn the_database_enforces_exactly_the_status_graph(db: TestStore) {
    let lease = time(db.now().await + time::Duration::minutes(5));
    let lock = |status: Status| -> [Arg; 2] {
        if status == Status::Sending {
            [text("node-a"), lease.clone()]
        } else {
            [NULL_TEXT, NULL_TIME]
        }
    };
    let mut refused = 0;
    for from in Status::ALL {
        for to in Status::ALL {
            if from == to {
                continue;
            }
            let [owner, until] = lock(from);
            let id = db
                .insert_row(
                    "INSERT INTO sms (client_id, mobile_no, message, status, locked_by, lease_expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[int(1), text("+254712345678"), text("x"), text(from.as_str()), owner, until],
                )
                .await;
            let [owner, until] = lock(to);
            let result = db
                .try_exec(
                    "UPDATE sms SET status = $1, locked_by = $2, lease_expires_at = $3 WHERE id = $4",
                    &[text(to.as_str()), owner, until, int(id)],
                )
                .await;
            if from.can_become(to) {
                assert_eq!(
                    result.map_err(|e| e.to_string()),
                    Ok(1),
                    "{from} -> {to} is allowed"
                );
                assert_eq!(db.status(id).await, to.as_str());
            } else {
                refused += 1;
                let error = result.expect_err("refused").to_string();
                assert!(
                    error.contains(&format!("status transition {from} -> {to} is not allowed")),
                    "{from} -> {to}: {error}"
                );
                assert_eq!(
                    db.status(id).await,
                    from.as_str(),
                    "{from} -> {to} left the row alone"
                );
            }
        }
    }
    // 42 moves between two different statuses, 10 of them allowed.
    assert_eq!(refused, 32);
}

/// A message is for exactly one of a client or a staff member, with a known status.
async fn the_database_refuses_rows_outside_the_contract(db: TestStore) {
    for (client, staff) in [(int(1), int(2)), (NULL_INT, NULL_INT)] {
        let error = db
            .try_insert(
                "INSERT INTO sms (client_id, staff_id, mobile_no, message) VALUES ($1, $2, $3, $4)",
                &[client, staff, text("+254712345678"), text("x")],
            )
            .await
            .expect_err("refused");
        assert!(error.to_string().contains("sms_one_recipient"), "{error}");
    }
    let error = db
        .try_insert(
            "INSERT INTO sms (client_id, mobile_no, message, status) VALUES ($1, $2, $3, $4)",
            &[int(1), text("+254712345678"), text("x"), text("queued")],
        )
        .await
        .expect_err("refused");
    assert!(error.to_string().contains("sms_status_known"), "{error}");
    let error = db
        .try_insert(
            "INSERT INTO sms (client_id, mobile_no, message, status) VALUES ($1, $2, $3, $4)",
            &[int(1), text("+254712345678"), text("x"), text("sending")],
        )
        .await
        .expect_err("refused");
    assert!(
        error.to_string().contains("sms_lease_while_sending"),
        "{error}"
    );
    assert_eq!(db.count("SELECT count(*) FROM sms", &[]).await, 0);
}

/// SQLite has no timestamp type: a time written as text would compare as
/// text, so the schema refuses it.
#[tokio::test]
async fn sqlite_refuses_times_that_are_not_epoch_milliseconds() {
    let Some(db) = TestStore::new(Backend::Sqlite).await else {
        return;
    };
    let error = db
        .try_insert(
            "INSERT INTO sms (client_id, mobile_no, message, not_before) VALUES ($1, $2, $3, $4)",
            &[
                int(1),
                text("+254712345678"),
                text("x"),
                text("2026-11-27T10:00:00Z"),
            ],
        )
        .await
        .expect_err("refused");
    assert!(
        error.to_string().contains("sms_times_are_epoch_ms"),
        "{error}"
    );
    // What the README tells the platform to write works.
    let id = db
        .insert_row(
            "INSERT INTO sms (client_id, mobile_no, message, not_before)
             VALUES ($1, $2, $3, strftime('%s', 'now', '+1 hour') * 1000)",
            &[int(1), text("+254712345678"), text("x")],
        )
        .await;
    let sms = db.store.get(id).await.unwrap().unwrap();
    let wait = sms.not_before.unwrap() - time::OffsetDateTime::now_utc();
    assert!(
        wait > time::Duration::minutes(59) && wait <= time::Duration::minutes(60),
        "{wait}"
    );
}

/// Rows INSERTed from a session in another time zone still get UTC times,
/// so they are due at once rather than hours early or late.
#[tokio::test]
async fn mysql_defaults_are_utc_whatever_the_session_time_zone() {
    use sqlx::Connection;
    let Some(db) = TestStore::new(Backend::MySql).await else {
        return;
    };
    let mut conn = sqlx::MySqlConnection::connect_with(
        &db.url
            .parse::<sqlx::mysql::MySqlConnectOptions>()
            .unwrap()
            .timezone(Some("+05:00".to_owned())),
    )
    .await
    .unwrap();
    sqlx::query("INSERT INTO sms (client_id, mobile_no, message) VALUES (1, '+254712345678', 'x')")
        .execute(&mut conn)
        .await
        .unwrap();
    let local: String = sqlx::query_scalar("SELECT CAST(NOW() AS CHAR)")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let utc: String = sqlx::query_scalar("SELECT CAST(UTC_TIMESTAMP() AS CHAR)")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_ne!(local, utc, "the session really is at +05:00");
    let sms = db
        .store
        .list(&smsrelay::store::SmsQuery {
            filter: Default::default(),
            order_by: Default::default(),
            descending: false,
            paging: smsrelay::store::Paging::Offset {
                offset: 0,
                limit: 10,
            },
        })
        .await
        .unwrap()
        .items
        .remove(0);
    let now = db.now().await;
    assert!(
        (sms.created_at - now).abs() < time::Duration::seconds(5),
        "created_at {} is UTC (database now {now})",
        sms.created_at
    );
    let claim = db
        .store
        .claim("node-a", 10, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claim.messages.len(), 1, "due now, not in five hours");
}

/// smsrelay's MySQL sessions run in UTC and at READ COMMITTED (no gap locks
/// that would block the platform's INSERTs while a claim is open).
#[tokio::test]
async fn mysql_sessions_are_utc_and_read_committed() {
    let Some(db) = TestStore::new(Backend::MySql).await else {
        return;
    };
    let store =
        smsrelay::store::mysql::MySqlStore::open(&crate::backends::options(&db.url)).unwrap();
    let zone: String = sqlx::query_scalar("SELECT @@session.time_zone")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(zone, "+00:00");
    // MySQL 8 and MariaDB 11.1+ call it transaction_isolation; older MariaDB tx_isolation.
    let isolation: String = match sqlx::query_scalar("SELECT @@session.transaction_isolation")
        .fetch_one(store.pool())
        .await
    {
        Ok(isolation) => isolation,
        Err(_) => sqlx::query_scalar("SELECT @@session.tx_isolation")
            .fetch_one(store.pool())
            .await
            .unwrap(),
    };
    assert_eq!(isolation, "READ-COMMITTED");
}
