//! The API's pools carry a statement timeout: the database (or, on SQLite,
//! smsrelay's progress handler) cuts a slow query off, and the error says so.

use std::time::Duration;

use smsrelay::store::{OrderBy, Paging, Session, SmsFilter, SmsQuery};

use crate::backends::{TestStore, options};

conformance!(an_api_pool_cuts_off_a_query_over_its_statement_timeout);

async fn an_api_pool_cuts_off_a_query_over_its_statement_timeout(db: TestStore) {
    // 100,000 rows: sorting them all takes far longer than the 1 ms allowed.
    db.exec("CREATE TABLE digits (d INTEGER NOT NULL)", &[])
        .await;
    db.exec(
        "INSERT INTO digits (d) VALUES (0), (1), (2), (3), (4), (5), (6), (7), (8), (9)",
        &[],
    )
    .await;
    db.exec(
        "INSERT INTO sms (client_id, mobile_no, message)
         SELECT 1 + a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d, '+254712345678', 'x'
         FROM digits a, digits b, digits c, digits e, digits f",
        &[],
    )
    .await;
    let mut api = options(&db.url);
    api.pool_size = 1;
    api.session = Session::api(Duration::from_millis(1));
    let api = smsrelay::store::open(&api).expect("store opens");
    let deep = SmsQuery {
        filter: SmsFilter::default(),
        order_by: OrderBy::UpdatedAt,
        descending: true,
        paging: Paging::Offset {
            offset: 90_000,
            limit: 50,
        },
    };
    let error = api.list(&deep).await.expect_err("cut off");
    assert!(error.is_statement_timeout(), "{error:?}");
    // The dispatcher's pool has no such limit.
    let page = db.store.list(&deep).await.expect("no limit");
    assert_eq!(page.items.len(), 50);
}
