//! The directory lookup, idempotent enqueue, readiness and queue stats.

use std::time::Duration;

use smsrelay::domain::{NewSms, Recipient, Status};
use smsrelay::store::{DirectoryQueries, Lookup, StoreError};
use time::macros::datetime;

use crate::backends::{Backend, NULL_TEXT, TestStore, int, placeholders, text, time};

conformance!(
    lookup_mobile_reads_the_platform_directory,
    lookup_without_directory_tables_names_the_setting,
    enqueue_with_an_idempotency_key_inserts_once,
    enqueue_keeps_the_recipient_and_the_schedule,
    ready_only_once_migrated,
    stats_count_statuses_and_the_due_backlog,
);

/// Fineract-like directory tables, as the platform has them.
async fn directory_tables(db: &TestStore) {
    for table in ["m_client", "m_staff"] {
        db.exec(
            &format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, mobile_no VARCHAR(50))"),
            &[],
        )
        .await;
    }
    for (table, id, number) in [
        ("m_client", 1, Some("+254712345678")),
        ("m_client", 2, None),
        ("m_client", 3, Some("   ")),
        ("m_staff", 7, Some("+254700000007")),
    ] {
        db.exec(
            &format!("INSERT INTO {table} (id, mobile_no) VALUES ($1, $2)"),
            &[int(id), number.map_or(NULL_TEXT, text)],
        )
        .await;
    }
}

/// The number comes from the platform's tables: found, no number on record, or no such person.
async fn lookup_mobile_reads_the_platform_directory(db: TestStore) {
    directory_tables(&db).await;
    let store = &db.store;
    assert_eq!(
        store.lookup_mobile(Recipient::Client(1)).await.unwrap(),
        Lookup::Found("+254712345678".into())
    );
    assert_eq!(
        store.lookup_mobile(Recipient::Client(2)).await.unwrap(),
        Lookup::NoNumber
    );
    assert_eq!(
        store.lookup_mobile(Recipient::Client(3)).await.unwrap(),
        Lookup::NoNumber,
        "blank is no number"
    );
    assert_eq!(
        store.lookup_mobile(Recipient::Client(99)).await.unwrap(),
        Lookup::NotFound
    );
    assert_eq!(
        store.lookup_mobile(Recipient::Staff(7)).await.unwrap(),
        Lookup::Found("+254700000007".into())
    );
    assert_eq!(
        store.lookup_mobile(Recipient::Staff(1)).await.unwrap(),
        Lookup::NotFound,
        "staff are not clients"
    );

    // Another schema: the operator's own queries, in the dialect's placeholder style.
    db.exec(
        "CREATE TABLE people (person_id BIGINT PRIMARY KEY, phone VARCHAR(50))",
        &[],
    )
    .await;
    db.exec(
        "INSERT INTO people (person_id, phone) VALUES ($1, $2)",
        &[int(5), text("+254711000005")],
    )
    .await;
    let custom = db.store_with_directory(DirectoryQueries {
        client_query: Some(placeholders(
            db.backend,
            "SELECT phone FROM people WHERE person_id = $1",
        )),
        staff_query: Some(placeholders(
            db.backend,
            "SELECT mobile_no FROM m_staff WHERE id = $1",
        )),
    });
    assert_eq!(
        custom.lookup_mobile(Recipient::Client(5)).await.unwrap(),
        Lookup::Found("+254711000005".into())
    );
    assert_eq!(
        custom.lookup_mobile(Recipient::Client(1)).await.unwrap(),
        Lookup::NotFound
    );

    // A query that does not fit the schema is reported as a configuration problem.
    let broken = db.store_with_directory(DirectoryQueries {
        client_query: Some(placeholders(
            db.backend,
            "SELECT mobile FROM no_such_table WHERE id = $1",
        )),
        staff_query: None,
    });
    match broken.lookup_mobile(Recipient::Client(1)).await {
        Err(StoreError::Directory(message)) => {
            assert!(message.contains("directory.client_query"), "{message}")
        }
        other => panic!("expected a directory error, got {other:?}"),
    }
}

/// The default directory is Fineract's `m_client` / `m_staff`; without them the error says what to set.
async fn lookup_without_directory_tables_names_the_setting(db: TestStore) {
    match db.store.lookup_mobile(Recipient::Staff(1)).await {
        Err(StoreError::Directory(message)) => {
            assert!(message.contains("directory.staff_query"), "{message}")
        }
        other => panic!("expected a directory error, got {other:?}"),
    }
}

/// An idempotency key inserts once; a retried request gets the first row back.
async fn enqueue_with_an_idempotency_key_inserts_once(db: TestStore) {
    let sms = |key: Option<&str>| NewSms {
        recipient: Recipient::Client(42),
        mobile_no: "+254712345678".into(),
        message: "Your code is 1234".into(),
        not_before: None,
        expires_at: None,
        idempotency_key: key.map(str::to_owned),
    };
    let first = db.store.enqueue(&sms(Some("req-1"))).await.unwrap();
    assert!(first.created);
    let again = db.store.enqueue(&sms(Some("req-1"))).await.unwrap();
    assert_eq!((again.id, again.created), (first.id, false));
    let other_key = db.store.enqueue(&sms(Some("REQ-1"))).await.unwrap();
    assert!(
        other_key.created && other_key.id != first.id,
        "keys compare exactly (case too)"
    );
    let a = db.store.enqueue(&sms(None)).await.unwrap();
    let b = db.store.enqueue(&sms(None)).await.unwrap();
    assert!(
        a.created && b.created && a.id != b.id,
        "no key, no deduplication"
    );
    assert_eq!(db.count("SELECT count(*) FROM sms", &[]).await, 4);

    let row = db.store.get(first.id).await.unwrap().unwrap();
    assert_eq!(row.status, Status::Pending);
    assert_eq!((row.client_id, row.staff_id), (Some(42), None));
    assert_eq!(row.message, "Your code is 1234");
}

/// Enqueued rows keep their recipient and schedule, and wait for `not_before`.
async fn enqueue_keeps_the_recipient_and_the_schedule(db: TestStore) {
    let now = db.now().await;
    let not_before = now.replace_millisecond(0).unwrap() + time::Duration::hours(1);
    let expires_at = not_before + time::Duration::days(1);
    let enqueued = db
        .store
        .enqueue(&NewSms {
            recipient: Recipient::Staff(7),
            mobile_no: "0712345678".into(),
            message: "Branch meeting moved".into(),
            not_before: Some(not_before),
            expires_at: Some(expires_at),
            idempotency_key: None,
        })
        .await
        .unwrap();
    let row = db.store.get(enqueued.id).await.unwrap().unwrap();
    assert_eq!((row.client_id, row.staff_id), (None, Some(7)));
    assert_eq!(row.mobile_no, "0712345678");
    assert_eq!(
        (row.not_before, row.expires_at),
        (Some(not_before), Some(expires_at))
    );
    assert!(
        db.store
            .claim("node-a", 10, Duration::from_secs(60))
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    assert_eq!(db.status(enqueued.id).await, "pending");
}

/// Ready means reachable and migrated; migrating twice is harmless.
async fn ready_only_once_migrated(db: TestStore) {
    assert!(
        db.store.ready().await.unwrap(),
        "the suite's stores are migrated"
    );
    assert!(db.store.ping().await.is_ok());
    let fresh = TestStore::unmigrated(db.backend)
        .await
        .expect("same server");
    assert!(
        !fresh.store.ready().await.unwrap(),
        "reachable but not migrated"
    );
    fresh.store.migrate().await.unwrap();
    assert!(fresh.store.ready().await.unwrap());
    fresh.store.migrate().await.unwrap();
    assert!(fresh.store.ready().await.unwrap());
}

/// Stats count every status (zeros included), the due rows and the oldest one's age.
async fn stats_count_statuses_and_the_due_backlog(db: TestStore) {
    let now = db.now().await;
    let empty = db.store.stats().await.unwrap();
    // Only the queue's states, from their indexes; terminal totals come from counters.
    assert_eq!(
        empty.by_status,
        [(Status::Pending, 0), (Status::Sending, 0)]
    );
    assert_eq!((empty.due, empty.oldest_due_age_secs), (0, 0.0));

    let insert =
        |status: &'static str,
         created: time::OffsetDateTime,
         not_before: Option<time::OffsetDateTime>| {
            let db = &db;
            async move {
                db.insert_row(
                "INSERT INTO sms (client_id, mobile_no, message, status, created_at, not_before)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[int(1), text("+254712345678"), text("x"), text(status), time(created),
                  not_before.map_or(crate::backends::NULL_TIME, time)],
            )
            .await
            }
        };
    insert("pending", now - time::Duration::seconds(30), None).await;
    insert("pending", now - time::Duration::seconds(5), None).await;
    insert("pending", now, Some(now + time::Duration::hours(1))).await;
    insert("sent", now - time::Duration::hours(2), None).await;
    insert("failed", now - time::Duration::hours(3), None).await;
    insert("failed", now - time::Duration::hours(3), None).await;

    let stats = db.store.stats().await.unwrap();
    assert_eq!(
        stats.by_status,
        [(Status::Pending, 3), (Status::Sending, 0)]
    );
    assert_eq!(stats.due, 2, "the future one is not due");
    assert!(
        stats.oldest_due_age_secs >= 30.0 && stats.oldest_due_age_secs < 40.0,
        "{}",
        stats.oldest_due_age_secs
    );
}

/// Times outside SQLite's millisecond grain are stored truncated, and read back exactly.
#[tokio::test]
async fn sqlite_keeps_times_to_the_millisecond() {
    let Some(db) = TestStore::new(Backend::Sqlite).await else {
        return;
    };
    let at = datetime!(2030-02-03 04:05:06.789_999 UTC);
    let id = db
        .store
        .enqueue(&NewSms {
            recipient: Recipient::Client(1),
            mobile_no: "+254712345678".into(),
            message: "x".into(),
            not_before: Some(at),
            expires_at: None,
            idempotency_key: None,
        })
        .await
        .unwrap()
        .id;
    let row = db.store.get(id).await.unwrap().unwrap();
    assert_eq!(row.not_before, Some(datetime!(2030-02-03 04:05:06.789 UTC)));
    assert_eq!(
        db.count("SELECT not_before FROM sms WHERE id = $1", &[int(id)])
            .await,
        1_896_321_906_789
    );
}
