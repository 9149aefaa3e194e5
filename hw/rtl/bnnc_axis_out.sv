// Pixel stream -> AXI4-Stream master.
//
// The mirror of bnnc_axis_in: each pixel of C elements of EB bits leaves as ceil(C / BE) beats of
// BE elements (element j in m_axis_tdata[j*EB +: EB], unused bits 0); tlast marks the last beat of
// each frame of PIXELS pixels. Nothing moves while m_axis_tready is low.
`default_nettype none
module bnnc_axis_out #(
    parameter int EB = 8,
    parameter int C = 3,
    parameter int BE = 3,
    parameter int PIXELS = 1,
    parameter int TW = 32
) (
    input  logic            clk,
    input  logic            rst_n,
    input  logic            in_valid,
    output logic            in_ready,
    input  logic [C*EB-1:0] in_data,
    output logic            m_axis_tvalid,
    input  logic            m_axis_tready,
    output logic [  TW-1:0] m_axis_tdata,
    output logic            m_axis_tlast
);
  localparam int BPP = (C + BE - 1) / BE;
  localparam int BW = BE * EB;
  localparam int BB = BPP > 1 ? $clog2(BPP) : 1;
  localparam int PB = PIXELS > 1 ? $clog2(PIXELS) : 1;

  logic [BPP*BW-1:0] pixel;
  logic [BB-1:0] beat;
  logic [PB-1:0] pix;

  wire last_beat = beat == BB'(BPP - 1);
  wire sent = m_axis_tvalid && m_axis_tready;

  assign in_ready = !m_axis_tvalid || (m_axis_tready && last_beat);
  assign m_axis_tdata = TW'(pixel[beat*BW+:BW]);
  assign m_axis_tlast = last_beat && pix == PB'(PIXELS - 1);

  always_ff @(posedge clk) begin
    if (in_valid && in_ready) pixel <= (BPP * BW)'(in_data);
  end

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      beat <= '0;
      pix <= '0;
      m_axis_tvalid <= 1'b0;
    end else begin
      if (sent) begin
        beat <= last_beat ? '0 : beat + 1'b1;
        if (last_beat) pix <= m_axis_tlast ? '0 : pix + 1'b1;
        if (last_beat) m_axis_tvalid <= 1'b0;
      end
      if (in_valid && in_ready) m_axis_tvalid <= 1'b1;
    end
  end
endmodule
`default_nettype wire
