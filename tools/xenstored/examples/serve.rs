fn main() {
    tracing_subscriber::fmt().with_env_filter("trace").init();
    let path = std::env::args().nth(1).unwrap();
    rustbk_xenstored::Server::bind(std::path::Path::new(&path)).unwrap().run().unwrap();
}
