//! Unit tests that need no Cassandra: encodings, statement text, planning, configuration.

use rankmysteps_dataflow::event::day_from_civil;
use rankmysteps_dataflow::output::EpochOutput;
use rankmysteps_dataflow::ranking::TopRow;
use scylla::statement::Consistency;
use scylla::value::CqlDate;

use super::plan::{plan, DayMark, Write};
use super::schema::{statements, Cql};
use super::session::backoff;
use super::*;

#[test]
fn day_encoding() {
    assert_eq!(day_to_cql(0), CqlDate(1 << 31));
    assert_eq!(day_to_cql(i32::MIN), CqlDate(0));
    assert_eq!(day_to_cql(i32::MAX), CqlDate(u32::MAX));
    for day in [i32::MIN, -1, 0, 1, day_from_civil(2026, 11, 27), i32::MAX] {
        assert_eq!(day_from_cql(day_to_cql(day)), day);
    }
}

#[test]
fn user_keys_sort_like_values() {
    let users = [
        0u128,
        1,
        7,
        1 << 64,
        u128::MAX >> 1,
        (1 << 127) + 5,
        u128::MAX,
    ];
    for w in users.windows(2) {
        assert!(user_to_key(w[0]) < user_to_key(w[1]), "{w:?}");
    }
    for u in users {
        assert_eq!(user_from_key(&user_to_key(u)).unwrap(), u);
        assert_eq!(user_from_uuid(user_to_uuid(u)), u);
    }
    assert_eq!(
        user_to_uuid(7).to_string(),
        "00000000-0000-0000-0000-000000000007"
    );
    assert!(user_from_key(&[1, 2, 3]).is_err());
}

#[test]
fn schema_statements() {
    let config = CassandraConfig::default();
    let all = statements("ks1", &config.replication_cql());
    assert_eq!(all.len(), 9);
    assert_eq!(
        all[0].split_whitespace().collect::<Vec<_>>().join(" "),
        "CREATE KEYSPACE IF NOT EXISTS ks1 WITH replication = \
         {'class': 'SimpleStrategy', 'replication_factor': '1'}"
    );
    for table in [
        "top_by_day",
        "totals_by_user",
        "histogram_by_day",
        "users_by_total",
        "days",
        "day_list",
        "progress",
        "generations",
    ] {
        let prefix = format!("CREATE TABLE IF NOT EXISTS ks1.{table} (");
        assert!(all.iter().any(|s| s.starts_with(&prefix)), "{table}");
    }
    for s in &all {
        assert!(!s.contains('{') || s.starts_with("CREATE KEYSPACE"), "{s}");
        assert!(!s.contains("--"), "comment left in {s}");
        let upper = s.to_ascii_uppercase();
        for banned in ["MATERIALIZED", "INDEX", "COUNTER", "ALLOW FILTERING"] {
            assert!(!upper.contains(banned), "{banned} in {s}");
        }
    }
}

#[test]
fn statement_text() {
    let cql = Cql::new("rms");
    let writes = [
        &cql.total_upsert,
        &cql.total_delete,
        &cql.listing_insert,
        &cql.listing_delete,
        &cql.top_upsert,
        &cql.top_delete,
        &cql.histogram_upsert,
        &cql.histogram_delete,
        &cql.day_users,
        &cql.day_users_delete,
        &cql.day_mark,
        &cql.progress_upsert,
        &cql.day_list_upsert,
    ];
    for w in writes {
        assert!(w.contains(" rms."), "{w}");
        assert!(w.contains("USING TIMESTAMP ?"), "{w}");
        assert!(
            !w.contains(" + ") && !w.contains(" - "),
            "no increments: {w}"
        );
    }
    let reads = [
        &cql.top_select,
        &cql.day_select,
        &cql.total_select,
        &cql.history_select,
        &cql.users_above,
        &cql.users_all,
        &cql.next_above,
        &cql.next_below,
        &cql.histogram_range,
        &cql.listing_tied_before,
        &cql.listing_above,
        &cql.listing_tied_after,
        &cql.listing_below,
        &cql.listing_first,
        &cql.progress_select,
        &cql.day_list_select,
        &cql.histogram_all,
    ];
    for r in reads {
        // Single partition: the partition key is bound by equality.
        let (_, filter) = r.split_once(" WHERE ").expect(r);
        assert!(
            filter.starts_with("day = ?")
                || filter.starts_with("user = ?")
                || filter.starts_with("job = ?")
                || filter == "bucket = 'all'",
            "{r}"
        );
        assert!(!r.contains("ALLOW FILTERING"), "{r}");
    }
    assert_eq!(
        cql.listing_above,
        "SELECT steps, user FROM rms.users_by_total WHERE day = ? AND steps > ? \
         ORDER BY steps ASC, user DESC LIMIT ?"
    );
}

fn row(position: u32, rank: u32, user: u128, steps: u64) -> TopRow {
    TopRow {
        position,
        rank,
        user,
        steps,
    }
}

#[test]
fn planning() {
    let d = day_from_civil(2026, 11, 27);
    let output = EpochOutput {
        epoch: 4,
        totals: vec![
            ((d, 9, 5), 1),   // new user
            ((d, 3, 10), -1), // 3: 10 -> 30
            ((d, 3, 30), 1),
            ((d, 8, 2), -1), // retracted with no insertion: a delete
        ],
        top: vec![
            ((d, row(1, 1, 3, 30)), 1),
            ((d, row(1, 1, 4, 20)), -1),
            ((d, row(2, 2, 4, 20)), 1),
            ((d, row(3, 3, 8, 2)), -1), // position 3 emptied
        ],
        histogram: vec![
            ((d, 2, 1), -1),
            ((d, 5, 1), 1),
            ((d, 10, 1), -1),
            ((d, 10, 2), 1),
        ],
        users: vec![((d, 3), -1), ((d, 4), 1), ((d + 1, 1), -1)],
        closed: vec![d - 2],
        ..EpochOutput::default()
    };
    let p = plan(&output).unwrap();
    assert_eq!(
        p.data,
        vec![
            Write::TotalUpsert {
                user: 9,
                day: d,
                steps: 5
            },
            Write::ListingInsert {
                day: d,
                steps: 5,
                user: 9
            },
            Write::ListingDelete {
                day: d,
                steps: 10,
                user: 3
            },
            Write::TotalUpsert {
                user: 3,
                day: d,
                steps: 30
            },
            Write::ListingInsert {
                day: d,
                steps: 30,
                user: 3
            },
            Write::ListingDelete {
                day: d,
                steps: 2,
                user: 8
            },
            Write::TotalDelete { user: 8, day: d },
            Write::TopUpsert {
                day: d,
                row: row(1, 1, 3, 30)
            },
            Write::TopUpsert {
                day: d,
                row: row(2, 2, 4, 20)
            },
            Write::TopDelete {
                day: d,
                position: 3
            },
            Write::HistogramDelete { day: d, steps: 2 },
            Write::HistogramUpsert {
                day: d,
                steps: 5,
                users: 1
            },
            Write::HistogramUpsert {
                day: d,
                steps: 10,
                users: 2
            },
            Write::DayUsers { day: d, users: 4 },
            Write::DayUsersDelete { day: d + 1 },
        ]
    );
    assert_eq!(
        p.marks,
        vec![
            DayMark {
                day: d - 2,
                is_final: true
            },
            DayMark {
                day: d,
                is_final: false
            },
            DayMark {
                day: d + 1,
                is_final: false
            },
        ]
    );
}

#[test]
fn planning_unordered_totals() {
    // An insertion before its retraction, or far from it, is still a change, not a delete.
    let output = EpochOutput {
        totals: vec![((1, 3, 30), 1), ((1, 4, 7), 1), ((1, 3, 10), -1)],
        ..EpochOutput::default()
    };
    let p = plan(&output).unwrap();
    assert!(!p
        .data
        .iter()
        .any(|w| matches!(w, Write::TotalDelete { .. })));
    assert!(p.data.contains(&Write::ListingDelete {
        day: 1,
        steps: 10,
        user: 3
    }));
    let too_big = EpochOutput {
        totals: vec![((1, 3, u64::MAX), 1)],
        ..EpochOutput::default()
    };
    assert!(plan(&too_big).is_err());
}

#[test]
fn config_parsing() {
    let config: CassandraConfig = toml::from_str(r#"contact_points = ["10.0.0.1:9042"]"#).unwrap();
    assert_eq!(config.keyspace, "rankmysteps");
    assert_eq!(config.consistency().unwrap(), Consistency::LocalQuorum);
    assert_eq!(
        (
            config.max_in_flight,
            config.request_timeout_ms,
            config.retries
        ),
        (32, 5000, 5)
    );
    assert_eq!(
        config.replication_cql(),
        "{'class': 'SimpleStrategy', 'replication_factor': '1'}"
    );
    config.validate().unwrap();

    let config: CassandraConfig = toml::from_str(
        r#"
        contact_points = ["a:9042", "b:9042"]
        keyspace = "rms_test"
        replication = { class = "NetworkTopologyStrategy", dc1 = "3" }
        consistency = "quorum"
        username_env = "CASS_USER"
        password_env = "CASS_PASSWORD"
        max_in_flight = 64
        bulk_interval_ms = 1500
        request_timeout_ms = 2000
        retries = 2
        "#,
    )
    .unwrap();
    config.validate().unwrap();
    assert_eq!(config.consistency().unwrap(), Consistency::Quorum);
    assert_eq!((config.max_in_flight, config.bulk_interval_ms), (64, 1500));
    assert_eq!(
        config.replication_cql(),
        "{'class': 'NetworkTopologyStrategy', 'dc1': '3'}"
    );

    let unknown = toml::from_str::<CassandraConfig>("contact_points = []\nhosts = 1");
    assert!(unknown.unwrap_err().to_string().contains("unknown field"));

    let err = parse_consistency("SERIAL").unwrap_err().to_string();
    assert!(err.contains("LOCAL_QUORUM"), "{err}");
    for bad in [
        CassandraConfig {
            keyspace: "x; DROP".into(),
            ..CassandraConfig::default()
        },
        CassandraConfig {
            keyspace: "1abc".into(),
            ..CassandraConfig::default()
        },
        CassandraConfig {
            contact_points: vec![],
            ..CassandraConfig::default()
        },
        CassandraConfig {
            username_env: Some("U".into()),
            ..CassandraConfig::default()
        },
        CassandraConfig {
            max_in_flight: 0,
            ..CassandraConfig::default()
        },
        CassandraConfig {
            consistency: "ANY".into(),
            ..CassandraConfig::default()
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
    let quoted = CassandraConfig {
        replication: [("class".to_owned(), "it's".to_owned())].into(),
        ..CassandraConfig::default()
    };
    assert_eq!(quoted.replication_cql(), "{'class': 'it''s'}");
}

#[test]
fn backoff_doubles_up_to_a_cap() {
    let waits: Vec<u128> = (0..10).map(|r| backoff(r).as_millis()).collect();
    assert_eq!(
        waits,
        vec![50, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
    );
    assert_eq!(backoff(40).as_millis(), 5000);
}

#[test]
fn stats_round_trip() {
    let stats = rankmysteps_dataflow::output::Stats {
        accepted: 10,
        duplicate: 2,
        rejected: [1, 2, 3, 4, 5, 6],
    };
    let map = stats_map(&stats).unwrap();
    assert_eq!(map["late"], 6);
    assert_eq!(map["malformed"], 1);
    assert_eq!(stats_from_map(&map).unwrap(), stats);
}
