//! A store whose [`Queue`] (claim and record, the dispatcher's hot path) is
//! replaced by another one, which times it or injects faults, say, while
//! everything else goes to the store underneath: such a wrapper implements
//! only the queue.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{
    Claim, Directory, Enqueued, Leases, Lookup, Messages, OptOuts, Page, PurgeReport, Queue,
    QueueStats, ReapReport, RecordReport, Reports, Retention, Schema, SmsQuery, Store, StoreError,
    Waiter,
};
use crate::domain::opt_out::OptOutKey;
use crate::domain::outcome::{Guarantee, ReleaseReason};
use crate::domain::report::{DeliveryReport, ReportApplied};
use crate::domain::{AttemptRecord, EventRecord, NewSms, Outcome, Recipient, SmsRecord};

/// `store` with its claims and outcome writes going through `queue` instead.
pub fn with_queue(store: Arc<dyn Store>, queue: Arc<dyn Queue>) -> Arc<dyn Store> {
    Arc::new(Layered { queue, store })
}

struct Layered {
    queue: Arc<dyn Queue>,
    store: Arc<dyn Store>,
}

#[async_trait]
impl Queue for Layered {
    async fn claim(
        &self,
        instance: &str,
        batch_size: u32,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.queue.claim(instance, batch_size, lease).await
    }

    async fn record_outcomes(
        &self,
        instance: &str,
        outcomes: &[Outcome],
    ) -> Result<RecordReport, StoreError> {
        self.queue.record_outcomes(instance, outcomes).await
    }
}

#[async_trait]
impl Leases for Layered {
    async fn release(
        &self,
        instance: &str,
        claims: &[(i64, u32)],
        why: ReleaseReason,
    ) -> Result<u64, StoreError> {
        self.store.release(instance, claims, why).await
    }

    async fn renew(
        &self,
        instance: &str,
        claims: &[(i64, u32)],
        lease: Duration,
    ) -> Result<u64, StoreError> {
        self.store.renew(instance, claims, lease).await
    }

    async fn reap_expired_leases(
        &self,
        max_attempts: u32,
        guarantee: Guarantee,
        limit: u32,
    ) -> Result<ReapReport, StoreError> {
        self.store
            .reap_expired_leases(max_attempts, guarantee, limit)
            .await
    }
}

#[async_trait]
impl Messages for Layered {
    async fn enqueue(&self, sms: &NewSms) -> Result<Enqueued, StoreError> {
        self.store.enqueue(sms).await
    }
    async fn get(&self, id: i64) -> Result<Option<SmsRecord>, StoreError> {
        self.store.get(id).await
    }
    async fn list(&self, query: &SmsQuery) -> Result<Page, StoreError> {
        self.store.list(query).await
    }
    async fn attempts(&self, id: i64) -> Result<Vec<AttemptRecord>, StoreError> {
        self.store.attempts(id).await
    }
    async fn events(&self, id: i64) -> Result<Vec<EventRecord>, StoreError> {
        self.store.events(id).await
    }
    async fn stats(&self) -> Result<QueueStats, StoreError> {
        self.store.stats().await
    }
}

#[async_trait]
impl Directory for Layered {
    async fn lookup_mobile(&self, recipient: Recipient) -> Result<Lookup, StoreError> {
        self.store.lookup_mobile(recipient).await
    }
}

#[async_trait]
impl Schema for Layered {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.store.migrate().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }
    async fn ready(&self) -> Result<bool, StoreError> {
        self.store.ready().await
    }
    async fn create_demo_directory(&self) -> Result<(), StoreError> {
        self.store.create_demo_directory().await
    }
    async fn watch_inserts(&self, waiter: Waiter<'_>, stop: &CancellationToken) {
        self.store.watch_inserts(waiter, stop).await
    }
}

#[async_trait]
impl Reports for Layered {
    async fn apply_delivery_report(
        &self,
        report: &DeliveryReport,
    ) -> Result<ReportApplied, StoreError> {
        self.store.apply_delivery_report(report).await
    }
    async fn attempt_by_provider_message_id(
        &self,
        provider: &str,
        provider_message_id: &str,
    ) -> Result<Option<(i64, u32)>, StoreError> {
        self.store
            .attempt_by_provider_message_id(provider, provider_message_id)
            .await
    }
    async fn overdue_reports(
        &self,
        providers: &[String],
        window: Duration,
    ) -> Result<u64, StoreError> {
        self.store.overdue_reports(providers, window).await
    }
}

#[async_trait]
impl OptOuts for Layered {
    async fn record_opt_out(
        &self,
        number: &OptOutKey,
        provider: &str,
        sms_id: i64,
    ) -> Result<bool, StoreError> {
        self.store.record_opt_out(number, provider, sms_id).await
    }
    async fn opted_out(&self, numbers: &[OptOutKey]) -> Result<Vec<OptOutKey>, StoreError> {
        self.store.opted_out(numbers).await
    }
    async fn remove_opt_out(&self, number: &OptOutKey) -> Result<bool, StoreError> {
        self.store.remove_opt_out(number).await
    }
}

#[async_trait]
impl Retention for Layered {
    async fn delete_finished(
        &self,
        older_than: Duration,
        limit: u32,
    ) -> Result<PurgeReport, StoreError> {
        self.store.delete_finished(older_than, limit).await
    }
}
