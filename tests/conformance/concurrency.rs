//! Several instances on one database: claims never overlap.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use smsrelay::store::Store;

use crate::backends::TestStore;

conformance!(concurrent_claims_are_disjoint,);

/// Two stores with their own pools (two processes, or two hosts) claiming
/// at the same time from one database get disjoint sets that cover every row.
/// On SQLite they are two separately opened pools on one file.
async fn concurrent_claims_are_disjoint(db: TestStore) {
    const ROWS: usize = 300;
    for i in 0..ROWS {
        db.insert(i as i64 + 1, "+254712345678", "hello").await;
    }
    let stores: [Arc<dyn Store>; 2] = [db.store.clone(), db.another_store()];
    let mut claimers = tokio::task::JoinSet::new();
    for (n, store) in stores.iter().enumerate() {
        // Two claimers per store: contention inside a pool and across pools.
        for worker in 0..2 {
            let store = store.clone();
            let instance = format!("node-{n}-{worker}");
            claimers.spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let claim = store
                        .claim(&instance, 7, Duration::from_secs(60))
                        .await
                        .unwrap();
                    if claim.messages.is_empty() {
                        return (instance, mine);
                    }
                    mine.extend(claim.messages.iter().map(|m| (m.id, m.attempt)));
                    tokio::task::yield_now().await;
                }
            });
        }
    }
    let mut all = Vec::new();
    let mut instances_with_work = 0;
    while let Some(joined) = claimers.join_next().await {
        let (instance, mine) = joined.unwrap();
        assert!(
            mine.iter().all(|(_, attempt)| *attempt == 1),
            "{instance}: first attempts only"
        );
        instances_with_work += usize::from(!mine.is_empty());
        all.extend(mine.into_iter().map(|(id, _)| id));
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), ROWS, "every row claimed once, none twice");
    assert_eq!(unique.len(), ROWS);
    assert!(instances_with_work >= 2, "the claimers really overlapped");
    assert_eq!(db.count_status("sending").await, ROWS as i64);
    assert_eq!(
        db.count(
            "SELECT count(*) FROM sms WHERE status = 'sending' AND locked_by LIKE 'node-%'",
            &[]
        )
        .await,
        ROWS as i64,
        "each leased to its claimer, the attempt in progress"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM sms WHERE attempts <> 1", &[])
            .await,
        0
    );
}
