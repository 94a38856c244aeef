//! SQL text built at run time, once for every dialect: the `GET /sms` list
//! query (filter, order, paging) and its count. The text is portable SQL; a
//! dialect supplies its placeholders and how it sorts NULLs, then binds the
//! collected [`Arg`]s itself (SQLite stores times as epoch milliseconds).

use time::OffsetDateTime;

use super::rows::SMS_COLUMNS;
use super::{OrderBy, Page, Paging, SmsQuery};
use crate::domain::SmsRecord;

/// One bound value; `None` binds SQL NULL.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Arg {
    Int(Option<i64>),
    Text(Option<String>),
    Time(Option<OffsetDateTime>),
}

/// What the shared SQL needs to know of a dialect.
#[derive(Debug, Clone, Copy)]
pub(super) struct Style {
    /// The n-th placeholder, from 1: `$1` or `?`.
    pub placeholder: fn(usize) -> String,
    /// Whether `NULLS LAST` exists (MySQL has none and sorts NULLs first ascending).
    pub nulls_last: bool,
}

impl Style {
    pub fn numbered(n: usize) -> String {
        format!("${n}")
    }

    pub fn question_mark(_: usize) -> String {
        "?".to_owned()
    }
}

/// SQL text and the values its placeholders stand for.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Sql {
    pub text: String,
    pub args: Vec<Arg>,
}

/// Appends text and placeholders, collecting the values.
struct Builder {
    style: Style,
    sql: Sql,
}

impl Builder {
    fn new(style: Style, text: &str) -> Self {
        Builder {
            style,
            sql: Sql {
                text: text.to_owned(),
                args: Vec::new(),
            },
        }
    }

    fn push(&mut self, text: &str) -> &mut Self {
        self.sql.text.push_str(text);
        self
    }

    fn bind(&mut self, arg: Arg) -> &mut Self {
        self.sql.args.push(arg);
        let placeholder = (self.style.placeholder)(self.sql.args.len());
        self.sql.text.push_str(&placeholder);
        self
    }

    /// The WHERE clause of a list query; `keyset` adds the cursor condition.
    fn filter(&mut self, query: &SmsQuery, keyset: bool) -> &mut Self {
        let f = &query.filter;
        self.push(" WHERE 1 = 1");
        if let Some(id) = f.client_id {
            self.push(" AND client_id = ").bind(Arg::Int(Some(id)));
        }
        if let Some(id) = f.staff_id {
            self.push(" AND staff_id = ").bind(Arg::Int(Some(id)));
        }
        for (i, status) in f.statuses.iter().enumerate() {
            self.push(if i == 0 { " AND status IN (" } else { ", " })
                .bind(Arg::Text(Some(status.as_str().to_owned())));
        }
        if !f.statuses.is_empty() {
            self.push(")");
        }
        if let Some(number) = &f.mobile_no {
            self.push(" AND mobile_no = ")
                .bind(Arg::Text(Some(number.clone())));
        }
        if let Some(from) = f.created_from {
            self.push(" AND created_at >= ").bind(Arg::Time(Some(from)));
        }
        if let Some(to) = f.created_to {
            self.push(" AND created_at < ").bind(Arg::Time(Some(to)));
        }
        if let (
            true,
            Paging::Keyset {
                after_id: Some(after),
                ..
            },
        ) = (keyset, query.paging)
        {
            self.push(if query.descending {
                " AND id < "
            } else {
                " AND id > "
            })
            .bind(Arg::Int(Some(after)));
        }
        self
    }
}

/// `ORDER BY ...` of a list query: the chosen column (offset paging only),
/// then id, in the chosen direction; NULLs last either way, so the order does
/// not flip with the direction. Only nullable columns get the NULL rule,
/// where it cannot stop an index from serving the order.
fn order(query: &SmsQuery, style: Style) -> String {
    let direction = if query.descending { "DESC" } else { "ASC" };
    let mut order = String::from(" ORDER BY ");
    if matches!(query.paging, Paging::Offset { .. }) && query.order_by != OrderBy::Id {
        let column = query.order_by.column();
        match (query.order_by.nullable(), style.nulls_last) {
            (true, true) => order.push_str(&format!("{column} {direction} NULLS LAST, ")),
            // `(col IS NULL)` first: false (0) sorts before true (1).
            (true, false) => order.push_str(&format!("({column} IS NULL), {column} {direction}, ")),
            (false, _) => order.push_str(&format!("{column} {direction}, ")),
        }
    }
    order.push_str("id ");
    order.push_str(direction);
    order
}

/// The rows of one page. The page's ids are picked first, then their rows
/// are joined in: the inner query is an index-only scan when an index holds
/// the filter and the order (the (client_id, id) index for a client's
/// messages by id), so the planner cannot prefer walking the primary key and
/// filtering, which reads most of the table for a busy client whose messages
/// are all recent; and OFFSET skips index entries, not rows. A derived table
/// rather than `id IN (...)`, because MySQL allows no LIMIT inside IN.
pub(super) fn list_page(query: &SmsQuery, style: Style) -> Sql {
    let order = order(query, style);
    let mut sql = Builder::new(style, "SELECT id FROM sms");
    sql.filter(query, true).push(&order).push(" LIMIT ");
    match query.paging {
        Paging::Offset { offset, limit } => {
            sql.bind(Arg::Int(Some(i64::from(limit))))
                .push(" OFFSET ")
                .bind(Arg::Int(Some(i64::try_from(offset).unwrap_or(i64::MAX))));
        }
        Paging::Keyset { limit, .. } => {
            // One more than asked: whether it comes back says if rows remain.
            sql.bind(Arg::Int(Some(i64::from(limit) + 1)));
        }
    }
    let mut sql = sql.sql;
    sql.text = format!(
        "SELECT {SMS_COLUMNS} FROM ({}) AS page JOIN sms USING (id){order}",
        sql.text
    );
    sql
}

/// The total of an offset-paged query (`None` for keyset paging, which has none).
pub(super) fn list_count(query: &SmsQuery, style: Style) -> Option<Sql> {
    matches!(query.paging, Paging::Offset { .. }).then(|| {
        let mut sql = Builder::new(style, "SELECT count(*) AS n FROM sms");
        sql.filter(query, false);
        sql.sql
    })
}

/// A page from the rows [`list_page`] found and the [`list_count`] total.
pub(super) fn page(query: &SmsQuery, mut items: Vec<SmsRecord>, total: Option<i64>) -> Page {
    let has_more = match query.paging {
        Paging::Offset { .. } => false,
        Paging::Keyset { limit, .. } => {
            let more = items.len() > limit as usize;
            items.truncate(limit as usize);
            more
        }
    };
    Page {
        total: total.map(|n| u64::try_from(n).unwrap_or(0)),
        items,
        has_more,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Status;
    use crate::store::SmsFilter;

    const MYSQL: Style = Style {
        placeholder: Style::question_mark,
        nulls_last: false,
    };
    const POSTGRES: Style = Style {
        placeholder: Style::numbered,
        nulls_last: true,
    };

    #[test]
    fn a_filtered_offset_page_picks_its_ids_first() {
        let query = SmsQuery {
            filter: SmsFilter {
                client_id: Some(42),
                statuses: vec![Status::Sent, Status::Failed],
                ..SmsFilter::default()
            },
            order_by: OrderBy::SentAt,
            descending: true,
            paging: Paging::Offset {
                offset: 20,
                limit: 10,
            },
        };
        let sql = list_page(&query, POSTGRES);
        assert_eq!(
            sql.text,
            format!(
                "SELECT {SMS_COLUMNS} FROM (SELECT id FROM sms WHERE 1 = 1 AND client_id = $1 \
                 AND status IN ($2, $3) ORDER BY sent_at DESC NULLS LAST, id DESC LIMIT $4 OFFSET $5) \
                 AS page JOIN sms USING (id) ORDER BY sent_at DESC NULLS LAST, id DESC"
            )
        );
        assert_eq!(sql.args.len(), 5);
        let count = list_count(&query, MYSQL).unwrap();
        assert_eq!(
            count.text,
            "SELECT count(*) AS n FROM sms WHERE 1 = 1 AND client_id = ? AND status IN (?, ?)"
        );
        assert!(
            list_page(&query, MYSQL)
                .text
                .contains("ORDER BY (sent_at IS NULL), sent_at DESC, id DESC LIMIT ? OFFSET ?")
        );
    }

    #[test]
    fn a_keyset_page_asks_for_one_more_row_and_has_no_count() {
        let query = SmsQuery {
            filter: SmsFilter::default(),
            order_by: OrderBy::Id,
            descending: false,
            paging: Paging::Keyset {
                after_id: Some(7),
                limit: 2,
            },
        };
        let sql = list_page(&query, MYSQL);
        assert!(
            sql.text.contains("AND id > ? ORDER BY id ASC LIMIT ?"),
            "{}",
            sql.text
        );
        assert_eq!(sql.args, [Arg::Int(Some(7)), Arg::Int(Some(3))]);
        assert_eq!(list_count(&query, MYSQL), None);
    }
}
