//! The test directory: which browsers, desk phones and switches exist and their passwords,
//! written through the signal server's own `Directory` (SQLite or PostgreSQL), with cheap
//! password hashing so sign-ins stay fast.

use signal_server::credentials::{ha1_md5, ha1_sha256, hash_password};
use signal_server::directory::{DatabaseOptions, NewAccount};
use trunkline_protocol::AccountKind;

/// The SIP digest realm of every desk phone.
pub const REALM: &str = "trunkline";

/// Browsers of the standard directory: (number, password).
pub const ALICE: (&str, &str) = ("2001", "alice-password");
pub const BOB: (&str, &str) = ("2002", "bob-password");
/// Switches of the standard directory: (id, secret).
pub const HQ: (&str, &str) = ("hq", "hq-secret-0123456789");
pub const BRANCH: (&str, &str) = ("branch", "branch-secret-0123456789");
/// A switch's address in `query_answer` / `direct_offer` / `connect` / `incoming`: its name.
pub const HQ_URL: &str = "switch:hq";
pub const BRANCH_URL: &str = "switch:branch";

/// One account: a desk phone when it has a home switch, else a browser.
#[derive(Clone, Debug)]
pub struct Account {
    pub number: &'static str,
    pub password: &'static str,
    pub switch: Option<&'static str>,
}

/// Desk phones of the standard directory: 1001 and 1002 on hq, 3001 on branch.
pub const DESK_PHONES: &[Account] = &[
    Account { number: "1001", password: "phone-1001", switch: Some("hq") },
    Account { number: "1002", password: "phone-1002", switch: Some("hq") },
    Account { number: "3001", password: "phone-3001", switch: Some("branch") },
];

/// The site directory of the gateway tests, where every password is `pw-<number>` (real
/// phones and sipp scenarios derive it): desk phones 1001/1002/1003 on hq, 3001 on branch;
/// browsers 2001/2002. Switch secrets are [`secret_of`].
pub const SITE_PHONES: &[Account] = &[
    Account { number: "1001", password: "pw-1001", switch: Some("hq") },
    Account { number: "1002", password: "pw-1002", switch: Some("hq") },
    Account { number: "1003", password: "pw-1003", switch: Some("hq") },
    Account { number: "3001", password: "pw-3001", switch: Some("branch") },
    Account { number: "2001", password: "pw-2001", switch: None },
    Account { number: "2002", password: "pw-2002", switch: None },
];

/// A switch's secret in the site directory.
pub fn secret_of(switch: &str) -> String {
    format!("{switch}-secret-0123456789abcdef")
}

/// What to provision.
#[derive(Clone, Debug)]
pub struct Directory {
    /// (id, secret)
    pub switches: Vec<(String, String)>,
    pub accounts: Vec<Account>,
    /// Display names are `<prefix> <number>` (tests assert on them: `User 2001`).
    pub display_prefix: &'static str,
}

impl Directory {
    /// Switches hq and branch ([`HQ`], [`BRANCH`]); browsers [`ALICE`], [`BOB`];
    /// [`DESK_PHONES`]; display names `User <number>`. (Tests count these five accounts.)
    pub fn standard() -> Directory {
        let browsers = [ALICE, BOB].map(|(number, password)| Account { number, password, switch: None });
        Directory {
            switches: [HQ, BRANCH].iter().map(|(id, s)| (id.to_string(), s.to_string())).collect(),
            accounts: browsers.into_iter().chain(DESK_PHONES.iter().cloned()).collect(),
            display_prefix: "User",
        }
    }

    /// Switches hq and branch with [`secret_of`]; [`SITE_PHONES`]; display names
    /// `Phone <number>`.
    pub fn site() -> Directory {
        Directory {
            switches: ["hq", "branch"].iter().map(|id| (id.to_string(), secret_of(id))).collect(),
            accounts: SITE_PHONES.to_vec(),
            display_prefix: "Phone",
        }
    }
}

/// Provision the [`Directory::standard`] directory into the database at `db_url`.
pub async fn provision(db_url: &str) {
    provision_with(db_url, &Directory::standard()).await
}

/// Provision `directory` into the database at `db_url` (`sqlite://…` or `postgres://…`;
/// migrations run here, so before any server opens it).
pub async fn provision_with(db_url: &str, directory: &Directory) {
    let dir = signal_server::directory::open(db_url, &DatabaseOptions::default()).await.expect("open the directory");
    for (id, secret) in &directory.switches {
        dir.add_switch(id, &hash_password(secret, 64, 1).unwrap()).await.expect("add switch");
    }
    for a in &directory.accounts {
        dir.add_account(NewAccount {
            number: a.number.into(),
            display_name: format!("{} {}", directory.display_prefix, a.number),
            kind: if a.switch.is_some() { AccountKind::Deskphone } else { AccountKind::Browser },
            home_switch: a.switch.map(Into::into),
            password_hash: hash_password(a.password, 64, 1).unwrap(),
            ha1_md5: a.switch.map(|_| ha1_md5(a.number, REALM, a.password)),
            ha1_sha256: a.switch.map(|_| ha1_sha256(a.number, REALM, a.password)),
        })
        .await
        .expect("add account");
    }
}
