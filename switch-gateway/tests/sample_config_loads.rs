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
