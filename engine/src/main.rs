fn main() {
    eprintln!("bitscale-engine: not built yet");
    std::process::exit(1);
}
