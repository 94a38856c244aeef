//! `list`: offset paging with totals, every filter, every order, keyset paging.

use std::cmp::Ordering;

use smsrelay::domain::{SmsRecord, Status};
use smsrelay::store::{OrderBy, Paging, SmsFilter, SmsQuery};
use time::OffsetDateTime;
use time::macros::datetime;

use crate::backends::{Arg, NULL_INT, NULL_TIME, TestStore, int, text, time};

conformance!(
    offset_paging_covers_every_row_with_totals,
    every_filter_selects_exactly_the_matching_rows,
    every_order_sorts_both_ways_with_nulls_last,
    keyset_paging_visits_every_row_once_both_ways,
);

const BASE: OffsetDateTime = datetime!(2026-01-05 08:00:00 UTC);

/// (client, staff, status, created minute, sent minute).
type Row = (Option<i64>, Option<i64>, &'static str, i64, Option<i64>);

/// Ties on purpose, so orders must fall back to the id.
const FIXTURE: [Row; 13] = [
    (Some(1), None, "pending", 0, None),
    (Some(1), None, "sent", 1, Some(10)),
    (Some(2), None, "sent", 1, Some(5)),
    (None, Some(7), "failed", 2, None),
    (Some(2), None, "delivered", 3, Some(5)),
    (None, Some(8), "declined", 4, None),
    (Some(1), None, "pending", 5, None),
    (Some(3), None, "undelivered", 5, Some(20)),
    (None, Some(7), "sent", 6, Some(7)),
    (Some(2), None, "pending", 7, None),
    (Some(3), None, "failed", 8, None),
    (None, Some(8), "sent", 9, Some(1)),
    (Some(1), None, "declined", 9, None),
];

fn minute(n: i64) -> OffsetDateTime {
    BASE + time::Duration::minutes(n)
}

fn number(client: Option<i64>, staff: Option<i64>) -> String {
    format!("+2547000000{:02}", client.or(staff).unwrap_or(0))
}

/// Inserts the fixture and returns every row as stored, in id order.
async fn fixture(db: &TestStore) -> Vec<SmsRecord> {
    let mut rows = Vec::new();
    for (client, staff, status, created, sent) in FIXTURE {
        let opt_int = |v: Option<i64>| v.map_or(NULL_INT, int);
        let args: [Arg; 7] = [
            opt_int(client),
            opt_int(staff),
            text(number(client, staff)),
            text("hello"),
            text(status),
            time(minute(created)),
            sent.map_or(NULL_TIME, |m| time(minute(m))),
        ];
        let id = db
            .insert_row(
                "INSERT INTO sms (client_id, staff_id, mobile_no, message, status, created_at, sent_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &args,
            )
            .await;
        rows.push(db.store.get(id).await.unwrap().unwrap());
    }
    rows
}

fn query(filter: SmsFilter, order_by: OrderBy, descending: bool, paging: Paging) -> SmsQuery {
    SmsQuery {
        filter,
        order_by,
        descending,
        paging,
    }
}

fn all_ids(rows: &[SmsRecord]) -> Vec<i64> {
    rows.iter().map(|r| r.id).collect()
}

/// Reads every page of an offset query; checks each page's total.
async fn offset_pages(
    db: &TestStore,
    filter: &SmsFilter,
    order_by: OrderBy,
    descending: bool,
    limit: u32,
) -> Vec<i64> {
    let mut seen = Vec::new();
    let mut offset = 0;
    let mut expected_total = None;
    loop {
        let page = db
            .store
            .list(&query(
                filter.clone(),
                order_by,
                descending,
                Paging::Offset { offset, limit },
            ))
            .await
            .unwrap();
        let total = page.total.expect("offset paging counts");
        assert_eq!(
            *expected_total.get_or_insert(total),
            total,
            "the total does not change between pages"
        );
        assert!(!page.has_more, "has_more is for keyset paging");
        if page.items.is_empty() {
            assert_eq!(seen.len() as u64, total);
            return seen;
        }
        assert!(page.items.len() <= limit as usize);
        seen.extend(page.items.iter().map(|r| r.id));
        offset += u64::from(limit);
    }
}

/// The order `GET /sms` promises: by the column, NULLs last in both
/// directions, ties by id in the same direction.
fn expected_order(rows: &[SmsRecord], order_by: OrderBy, descending: bool) -> Vec<i64> {
    fn key(r: &SmsRecord, order_by: OrderBy) -> Option<(i128, &'static str)> {
        let t = |t: OffsetDateTime| (t.unix_timestamp_nanos(), "");
        match order_by {
            OrderBy::Id => Some((i128::from(r.id), "")),
            OrderBy::CreatedAt => Some(t(r.created_at)),
            OrderBy::UpdatedAt => Some(t(r.updated_at)),
            OrderBy::SentAt => r.sent_at.map(t),
            OrderBy::Status => Some((0, r.status.as_str())),
            OrderBy::ClientId => r.client_id.map(|v| (i128::from(v), "")),
            OrderBy::StaffId => r.staff_id.map(|v| (i128::from(v), "")),
        }
    }
    let mut sorted: Vec<&SmsRecord> = rows.iter().collect();
    sorted.sort_by(|a, b| {
        let by_value = match (key(a, order_by), key(b, order_by)) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => return Ordering::Greater,
            (Some(_), None) => return Ordering::Less,
            (Some(x), Some(y)) => x.cmp(&y),
        };
        let ordering = by_value.then(a.id.cmp(&b.id));
        if descending {
            ordering.reverse()
        } else {
            ordering
        }
    });
    sorted.iter().map(|r| r.id).collect()
}

const ORDERS: [OrderBy; 7] = [
    OrderBy::Id,
    OrderBy::CreatedAt,
    OrderBy::UpdatedAt,
    OrderBy::SentAt,
    OrderBy::Status,
    OrderBy::ClientId,
    OrderBy::StaffId,
];

/// Offset paging returns every row once, in order, with the same total on every page.
async fn offset_paging_covers_every_row_with_totals(db: TestStore) {
    let rows = fixture(&db).await;
    for limit in [1, 5, 13, 50] {
        let seen = offset_pages(&db, &SmsFilter::default(), OrderBy::Id, false, limit).await;
        assert_eq!(seen, all_ids(&rows), "limit {limit}");
    }
    let page = db
        .store
        .list(&query(
            SmsFilter::default(),
            OrderBy::Id,
            true,
            Paging::Offset {
                offset: 10,
                limit: 5,
            },
        ))
        .await
        .unwrap();
    assert_eq!(page.total, Some(13));
    let mut last_three = all_ids(&rows)[..3].to_vec();
    last_three.reverse();
    assert_eq!(all_ids(&page.items), last_three);
    assert_eq!(page.items[0], rows[2], "rows come back whole");
}

/// Each filter, alone and combined, selects exactly the matching rows.
async fn every_filter_selects_exactly_the_matching_rows(db: TestStore) {
    let rows = fixture(&db).await;
    let select = |keep: &dyn Fn(&SmsRecord) -> bool| -> Vec<i64> {
        rows.iter().filter(|r| keep(r)).map(|r| r.id).collect()
    };
    let cases: Vec<(SmsFilter, Vec<i64>)> = vec![
        (
            SmsFilter {
                client_id: Some(1),
                ..Default::default()
            },
            select(&|r| r.client_id == Some(1)),
        ),
        (
            SmsFilter {
                staff_id: Some(7),
                ..Default::default()
            },
            select(&|r| r.staff_id == Some(7)),
        ),
        (
            SmsFilter {
                client_id: Some(99),
                ..Default::default()
            },
            vec![],
        ),
        (
            SmsFilter {
                statuses: vec![Status::Sent, Status::Failed],
                ..Default::default()
            },
            select(&|r| matches!(r.status, Status::Sent | Status::Failed)),
        ),
        (
            SmsFilter {
                statuses: vec![Status::Delivered],
                ..Default::default()
            },
            select(&|r| r.status == Status::Delivered),
        ),
        (
            SmsFilter {
                mobile_no: Some("+254700000002".into()),
                ..Default::default()
            },
            select(&|r| r.mobile_no == "+254700000002"),
        ),
        (
            SmsFilter {
                created_from: Some(minute(1)),
                created_to: Some(minute(5)),
                ..Default::default()
            },
            select(&|r| r.created_at >= minute(1) && r.created_at < minute(5)),
        ),
        (
            SmsFilter {
                created_from: Some(minute(9)),
                ..Default::default()
            },
            select(&|r| r.created_at >= minute(9)),
        ),
        (
            SmsFilter {
                created_to: Some(minute(1)),
                ..Default::default()
            },
            select(&|r| r.created_at < minute(1)),
        ),
        (
            SmsFilter {
                client_id: Some(1),
                statuses: vec![Status::Pending],
                ..Default::default()
            },
            select(&|r| r.client_id == Some(1) && r.status == Status::Pending),
        ),
    ];
    for (filter, expected) in cases {
        assert!(expected.len() < rows.len(), "{filter:?} filters something");
        let seen = offset_pages(&db, &filter, OrderBy::Id, false, 4).await;
        assert_eq!(seen, expected, "offset paging, {filter:?}");
        let page = db
            .store
            .list(&query(
                filter.clone(),
                OrderBy::Id,
                false,
                Paging::Keyset {
                    after_id: None,
                    limit: 100,
                },
            ))
            .await
            .unwrap();
        assert_eq!(all_ids(&page.items), expected, "keyset paging, {filter:?}");
    }
}

/// Every allowed order, both directions: NULLs last, ties broken by id.
async fn every_order_sorts_both_ways_with_nulls_last(db: TestStore) {
    let rows = fixture(&db).await;
    for order_by in ORDERS {
        for descending in [false, true] {
            let expected = expected_order(&rows, order_by, descending);
            let seen = offset_pages(&db, &SmsFilter::default(), order_by, descending, 4).await;
            assert_eq!(seen, expected, "{order_by:?} descending={descending}");
        }
    }
    // Spot checks a reader can follow: the first rows when ordering by sent_at.
    let sent_first = expected_order(&rows, OrderBy::SentAt, false);
    assert_eq!(sent_first[0], rows[11].id, "sent at minute 1");
    assert_eq!(
        &sent_first[1..3],
        &[rows[2].id, rows[4].id],
        "tie at minute 5, by id"
    );
    let sent_last = expected_order(&rows, OrderBy::SentAt, true);
    assert_eq!(sent_last[0], rows[7].id, "sent at minute 20");
    assert!(
        rows.iter()
            .find(|r| r.id == *sent_last.last().unwrap())
            .unwrap()
            .sent_at
            .is_none()
    );
}

/// Keyset paging by id visits every row exactly once, in both directions.
async fn keyset_paging_visits_every_row_once_both_ways(db: TestStore) {
    let rows = fixture(&db).await;
    for (filter, limit) in [
        (SmsFilter::default(), 4),
        (SmsFilter::default(), 13),
        (
            SmsFilter {
                client_id: Some(1),
                ..Default::default()
            },
            2,
        ),
    ] {
        for descending in [false, true] {
            let mut expected: Vec<i64> = rows
                .iter()
                .filter(|r| filter.client_id.is_none_or(|c| r.client_id == Some(c)))
                .map(|r| r.id)
                .collect();
            if descending {
                expected.reverse();
            }
            let mut seen = Vec::new();
            let mut after_id = None;
            loop {
                let page = db
                    .store
                    .list(&query(
                        filter.clone(),
                        OrderBy::Id,
                        descending,
                        Paging::Keyset { after_id, limit },
                    ))
                    .await
                    .unwrap();
                assert_eq!(page.total, None, "keyset paging does not count");
                assert!(page.items.len() <= limit as usize);
                seen.extend(page.items.iter().map(|r| r.id));
                if !page.has_more {
                    break;
                }
                after_id = page.items.last().map(|r| r.id);
            }
            assert_eq!(
                seen, expected,
                "{filter:?} limit {limit} descending={descending}"
            );
        }
    }
    // Past the end: an empty page with nothing more.
    let last = rows.last().unwrap().id;
    let page = db
        .store
        .list(&query(
            SmsFilter::default(),
            OrderBy::Id,
            false,
            Paging::Keyset {
                after_id: Some(last),
                limit: 5,
            },
        ))
        .await
        .unwrap();
    assert!(page.items.is_empty() && !page.has_more);
}
