//! The commented sample config is valid, equals the defaults, and env vars override it.

#[test]
fn sample_config_loads_and_equals_the_defaults() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/switch-gateway.example.toml");
    let cfg = switch_gateway::Config::load(Some(std::path::Path::new(path))).expect("sample config loads");
    assert_eq!(cfg, switch_gateway::Config::default());
    assert_eq!(cfg.rtp_range().unwrap(), 20000..=20999);
}

#[test]
fn unknown_keys_and_bad_values_are_refused() {
    assert!(switch_gateway::Config::from_toml("colour = \"blue\"").is_err());
    assert!(switch_gateway::Config::from_toml("rtp_ports = \"9-3\"").is_err());
    assert!(switch_gateway::Config::from_toml("cloud_url = \"http://x\"").is_err());
    assert!(switch_gateway::Config::from_toml("id = \"has space\"").is_err());
}

#[test]
fn the_removed_direct_endpoint_keys_are_refused_with_the_reason() {
    for (toml, key) in [
        ("direct_listen = \"0.0.0.0:7443\"", "direct_listen"),
        ("advertise_url = \"ws://203.0.113.7:7443/direct\"", "advertise_url"),
    ] {
        let err = switch_gateway::Config::from_toml(toml).expect_err("an old key is refused");
        assert!(matches!(err, switch_gateway::config::ConfigError::Removed { key: k, .. } if k == key), "{err}");
        let text = err.to_string();
        assert!(text.contains(&format!("`{key}` was removed")), "names the key: {text}");
        assert!(text.contains("WebRTC through the cloud") && text.contains("no inbound port"), "says why: {text}");
    }
    // Also from a file, among valid keys.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.toml");
    std::fs::write(&path, "id = \"hq\"\nsip_listen = \"0.0.0.0:5060\"\ndirect_listen = \"0.0.0.0:7443\"\n").unwrap();
    let err = switch_gateway::Config::load(Some(&path)).expect_err("an old config file is refused");
    assert!(err.to_string().contains("`direct_listen` was removed"), "{err}");
}
